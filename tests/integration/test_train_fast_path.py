"""The fast path of `perpo train` (issue 14) trains like the path it replaces, through the real Trainer.

Today's path: layout shared, every list re-encoded every epoch, a reference pass every step, peft's LoRA forward.
The fast path (the defaults): layout tree (shared response prefixes once, leaves not fed, lists unpadded, the last
layer only where a token is predicted), encoded lists kept, reference log-probs kept after a list's first pass,
fused LoRA. Same data, seed and steps: the same losses, reference log-probs and adapter, to fp32 tolerance.
"""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import write_lists
from transformers import TrainerCallback, TrainingArguments

from perpo.objectives.boxes import format_box
from perpo.objectives.rewards import iou_reward
from perpo.training.trainer import PerPOArguments, PerPOTrainer, run_train

pytestmark = pytest.mark.slow
N = 6
TODAY = dict(layout="shared", cache_reference=False, cache_inputs=False, fuse_lora=False)
_LOGPS = PerPOTrainer._logps


@pytest.fixture(scope="module")
def lists(synth_data, tmp_path_factory):
    """Four lists of N boxes near the target (so that responses share prefixes, and some repeat), IoU rewards."""
    rng = random.Random(0)

    def responses_for(gt):
        answers = [format_box([min(max(v + rng.choice([0, 0, 0.05, -0.1]), 0), 1) for v in gt]) for _ in range(N)]
        return answers, [iou_reward(a, gt) for a in answers]

    return write_lists(synth_data, tmp_path_factory.mktemp("fast") / "train.jsonl", 4, responses_for)


class Record(TrainerCallback):
    """The loss of every step, and how many reference passes ran."""

    def __init__(self):
        self.losses, self.reference_passes = [], 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _train(tiny_llava, lists, out, monkeypatch, training_kw=None, **path):
    record = Record()
    original_logps = _LOGPS

    def logps(self, model, batch):
        if not torch.is_grad_enabled():
            record.reference_passes += 1
        return original_logps(self, model, batch)

    monkeypatch.setattr(PerPOTrainer, "_logps", logps)
    args = PerPOArguments(
        model_name_or_path=str(tiny_llava), data=str(lists), n=N, lora_r=4, lora_alpha=8, beta=0.5, **path
    )
    training = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=2, num_train_epochs=3, logging_steps=1, learning_rate=5e-3,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0, **(training_kw or {}),
    )  # fmt: skip
    out = run_train(args, training, [record])
    return record, load_file(str(out / "adapter_model.safetensors"))


def test_fast_path_trains_like_todays_path(tiny_llava, lists, tmp_path, monkeypatch):
    today, adapter_today = _train(tiny_llava, lists, tmp_path / "today", monkeypatch, **TODAY)
    fast, adapter_fast = _train(tiny_llava, lists, tmp_path / "fast", monkeypatch)
    assert len(today.losses) == len(fast.losses) == 6  # 3 epochs of 2 steps
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(today.losses), rtol=1e-4, atol=1e-5)
    assert today.reference_passes == 6 and fast.reference_passes == 2  # epochs 2 and 3 reuse the stored ones
    assert adapter_today.keys() == adapter_fast.keys()
    for key, value in adapter_today.items():
        torch.testing.assert_close(adapter_fast[key], value, rtol=1e-3, atol=1e-5, msg=key)


def test_fast_path_under_gradient_checkpointing(tiny_llava, lists, tmp_path, monkeypatch):
    """Activation checkpointing re-runs the layers in the backward pass (the pruned last layer and the list-wise
    attention included): the same training."""
    plain, adapter_plain = _train(tiny_llava, lists, tmp_path / "plain", monkeypatch)
    kw = {"gradient_checkpointing": True}
    checkpointed, adapter_checkpointed = _train(tiny_llava, lists, tmp_path / "ckpt", monkeypatch, training_kw=kw)
    torch.testing.assert_close(torch.tensor(checkpointed.losses), torch.tensor(plain.losses), rtol=1e-5, atol=1e-6)
    for key, value in adapter_plain.items():
        torch.testing.assert_close(adapter_checkpointed[key], value, rtol=1e-4, atol=1e-6, msg=key)
