"""`perpo train --eval_data`: held-out greedy AP@50 during and after training, on the warmed-up tiny LLaVA (CPU).

The committed base model answers in the box format and gets some boxes right, so AP@50 and IoU are informative
numbers here (a random model only fails to parse), and agreeing with `evaluate_grounding` really means scoring.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import write_lists
from transformers import TrainerCallback, TrainingArguments

from perpo.cli import main
from perpo.io import read_jsonl
from perpo.objectives.boxes import format_box
from perpo.training.trainer import PerPOArguments, run_train

pytestmark = pytest.mark.slow
HELDOUT, LISTS = 6, 2
KEYS = [f"{name}/{metric}" for name in ("heldout", "train_lists") for metric in ("ap50", "iou", "parse_fail")]


@pytest.fixture(scope="module")
def lists(synth_data, tmp_path_factory):
    """Four two-response lists from the synthetic train split: the exact box (reward 1) and a shifted one (0.2)."""

    def responses_for(gt):
        return [format_box(gt), format_box([min(v + 0.25, 1.0) for v in gt])], [1.0, 0.2]

    return write_lists(synth_data, tmp_path_factory.mktemp("heldout_lists") / "train.jsonl", 4, responses_for)


def _train(base, data, val, out, monkeypatch, **training) -> list[dict]:
    """Train two steps with held-out scoring; returns every dict the Trainer logged."""
    seen: list[dict] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    args = PerPOArguments(
        model_name_or_path=str(base), data=str(data), n=2, lora_r=4, lora_alpha=8,
        eval_data=str(val), eval_limit=HELDOUT, eval_train_lists=LISTS,
    )  # fmt: skip
    kw = dict(
        output_dir=str(out), per_device_train_batch_size=2, max_steps=2, logging_steps=1, learning_rate=5e-3,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
    )  # fmt: skip
    run_train(args, TrainingArguments(**(kw | training)), [Record()])
    return seen


def test_heldout_ap50_is_logged_written_and_agrees_with_evaluate_grounding(
    base_model_asset, synth_data, lists, tmp_path, monkeypatch
):
    from perpo.model.modeling import load_model, load_processor
    from perpo.model.quickeval import evaluate_grounding

    val = synth_data / "synth_val.jsonl"
    every = tmp_path / "every_step"
    logs = _train(base_model_asset, lists, val, every, monkeypatch, eval_strategy="steps", eval_steps=1)

    history = json.loads((every / "heldout.json").read_text())
    assert [e["step"] for e in history["evals"]] == [1, 2]
    assert history["heldout"] == HELDOUT and history["train_lists"] == LISTS and history["frame"] == "padded"
    for entry in history["evals"]:
        assert all(0.0 <= entry[key] <= 1.0 for key in KEYS), entry
    evals = [log for log in logs if "heldout/ap50" in log]
    assert [{k: e[k] for k in KEYS} for e in evals] == [{k: e[k] for k in KEYS} for e in history["evals"]]

    # Loss logs carry the log-ratio statistics; at step 1 the policy is still the reference: exactly no movement.
    losses = [log for log in logs if "loss" in log]
    assert len(losses) == 2 and all(
        {"logratio/chosen", "logratio/rejected", "logratio/mean"} <= set(x) for x in losses
    )
    assert all(abs(losses[0][key]) < 1e-5 for key in ("logratio/chosen", "logratio/rejected", "logratio/mean"))
    assert not math.isclose(losses[1]["logratio/chosen"], 0.0, abs_tol=1e-6)  # lr 5e-3 moved it

    # Evaluating mid-run leaves training alone: with only the final evaluation, the same adapter and final scores.
    final_only = tmp_path / "final_only"
    logs_final = _train(base_model_asset, lists, val, final_only, monkeypatch)  # eval_strategy "no": at the end
    once = json.loads((final_only / "heldout.json").read_text())["evals"]
    assert [e["step"] for e in once] == [2] and [e for e in logs_final if "heldout/ap50" in e]
    assert {k: once[0][k] for k in KEYS} == {k: history["evals"][-1][k] for k in KEYS}
    a, b = (
        load_file(str(every / "adapter_model.safetensors")),
        load_file(str(final_only / "adapter_model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # The same numbers from perpo.model.quickeval on the saved adapter: held-out rows as they are, and the training
    # lists' instructions as flat rows of the synthetic split they were made from.
    model = load_model(base_model_asset, dtype="float32", adapter=every)
    processor = load_processor(base_model_asset)
    theirs = {
        "heldout": evaluate_grounding(model, processor, read_jsonl(val)[:HELDOUT], synth_data, frame="padded"),
        "train_lists": evaluate_grounding(
            model, processor, read_jsonl(synth_data / "synth_train.jsonl")[:LISTS], synth_data, frame="padded"
        ),
    }
    for key in KEYS:
        name, metric = key.split("/")
        assert history["evals"][-1][key] == pytest.approx(theirs[name][metric], abs=1e-9), key
    assert history["evals"][-1]["heldout/parse_fail"] < 1.0  # a model that answers: the numbers mean something


def test_bad_eval_data_fails_at_start_up_naming_the_file(tiny_llava, lists, synth_data, tmp_path, capsys):
    base = ["train", "--model_name_or_path", str(tiny_llava), "--data", str(lists), "--n", "2", "--use_cpu", "true"]
    base += ["--output_dir", str(tmp_path / "o")]
    assert main([*base, "--eval_data", str(tmp_path / "missing.jsonl")]) == 2
    assert "--eval_data" in (err := capsys.readouterr().err) and "missing.jsonl not found" in err
    bad = tmp_path / "bad.jsonl"
    rows = read_jsonl(synth_data / "synth_val.jsonl")[:2]
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({k: v for k, v in rows[1].items() if k != "bbox"}) + "\n")
    assert main([*base, "--eval_data", str(bad), "--eval_image_root", str(synth_data)]) == 2
    assert f"{bad}:2: field 'bbox' is missing" in capsys.readouterr().err
    assert main([*base, "--eval_strategy", "steps"]) == 2
    assert "--eval_strategy steps needs something to evaluate" in capsys.readouterr().err
    assert main([*base, "--eval_data", str(bad), "--eval_limit", "0"]) == 2
    assert "--eval_limit must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_train_help_names_the_eval_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--eval_data", "--eval_image_root", "--eval_limit", "--eval_train_lists", "heldout/ap50"):
        assert flag in out, flag
