"""`perpo train` through the real transformers Trainer on the test-size tiny LLaVA (CPU)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import write_lists
from transformers import TrainerCallback, TrainingArguments

from perpo.cli import main
from perpo.embedded.tiny import FAMILIES as TINY_FAMILIES
from perpo.io import read_jsonl, write_jsonl
from perpo.objectives.boxes import format_box
from perpo.objectives.losses import LOSSES
from perpo.training.trainer import PerPOArguments, run_train

pytestmark = pytest.mark.slow
N = 4


@pytest.fixture(scope="module")
def listwise_data(synth_data, tmp_path_factory):
    """Train-stage records from the synthetic benchmark with N jittered box answers and random rewards."""
    rng = random.Random(0)

    def responses_for(gt):
        responses = [format_box([min(max(v + rng.uniform(-0.3, 0.3), 0), 1) for v in gt]) for _ in range(N)]
        return responses, [round(rng.random(), 3) for _ in range(N)]

    return write_lists(synth_data, tmp_path_factory.mktemp("listwise") / "train.jsonl", 8, responses_for)


def _args(model, data, **kw):
    return PerPOArguments(model_name_or_path=str(model), data=str(data), n=N, lora_r=4, lora_alpha=8, **kw)


def _training(out, **kw):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=2, max_steps=2, logging_steps=1, learning_rate=5e-3,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
    )  # fmt: skip
    return TrainingArguments(**(base | kw))


def _adapter(out):
    return load_file(str(out / "adapter_model.safetensors"))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_each_loss_trains_through_the_trainer(loss, tiny_llava, listwise_data, tmp_path):
    out = run_train(_args(tiny_llava, listwise_data, loss=loss), _training(tmp_path / loss))
    weights = _adapter(out)
    lora = [k for k in weights if "lora_B" in k]
    assert lora and any(weights[k].abs().sum() > 0 for k in lora)  # B starts at zero: it moved
    assert any("multi_modal_projector" in k for k in weights)  # the projector trains too
    history = json.loads((out / "train_config.json").read_text())
    assert history["PerPOArguments"]["loss"] == loss


def test_lora_moves_base_stays_and_reference_is_fixed(tiny_llava, listwise_data, tmp_path, monkeypatch):
    from perpo.model.modeling import load_model
    from perpo.training.trainer import PerPOTrainer

    refs = []
    original = PerPOTrainer.reference_logps
    monkeypatch.setattr(
        PerPOTrainer, "reference_logps", lambda self, m, i: refs.append(original(self, m, i).clone()) or refs[-1]
    )
    final = {}

    class Snapshot(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            final.update({k: v.detach().clone() for k, v in model.named_parameters()})

    # One list, batch 1, four steps: the same list every step while the adapter moves.
    args = _args(tiny_llava, listwise_data, max_lists=1)
    run_train(args, _training(tmp_path / "fixed", per_device_train_batch_size=1, max_steps=4), [Snapshot()])

    assert len(refs) == 4 and all(torch.equal(ref, refs[0]) for ref in refs)
    initial = load_model(tiny_llava, dtype="float32").state_dict()
    base = {k: v for k, v in final.items() if "lora_" not in k and "modules_to_save" not in k}
    for name, value in base.items():
        plain = name.replace("base_model.model.", "").replace(".base_layer", "").replace(".original_module", "")
        assert torch.equal(value, initial[plain]), name
    assert any(v.abs().sum() > 0 for k, v in final.items() if "lora_B" in k)


def test_gradient_accumulation_matches_a_bigger_batch(tiny_llava, listwise_data, tmp_path):
    args = _args(tiny_llava, listwise_data, max_lists=2)
    one = run_train(args, _training(tmp_path / "b2", per_device_train_batch_size=2, max_steps=1))
    two = run_train(
        args, _training(tmp_path / "b1ga2", per_device_train_batch_size=1, gradient_accumulation_steps=2, max_steps=1)
    )
    a, b = _adapter(one), _adapter(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_chunked_forward_gives_the_same_training_step(tiny_llava, listwise_data, tmp_path):
    args = _args(tiny_llava, listwise_data, max_lists=2)
    whole = _adapter(run_train(args, _training(tmp_path / "whole", max_steps=1)))
    args.chunk_size = 1
    chunked = _adapter(run_train(args, _training(tmp_path / "chunked", max_steps=1)))
    for key in whole:
        torch.testing.assert_close(whole[key], chunked[key], rtol=1e-4, atol=1e-6)


def test_naive_and_shared_layouts_train_identically(tiny_llava, listwise_data, tmp_path):
    naive = _adapter(run_train(_args(tiny_llava, listwise_data, layout="naive"), _training(tmp_path / "naive")))
    shared = _adapter(run_train(_args(tiny_llava, listwise_data, layout="shared"), _training(tmp_path / "shared")))
    for key in naive:
        torch.testing.assert_close(naive[key], shared[key], rtol=1e-3, atol=1e-5)


def test_killed_after_a_checkpoint_and_rerun_resumes_to_the_same_adapter(tiny_llava, listwise_data, tmp_path, caplog):
    from perpo.config import ConfigError

    args = _args(tiny_llava, listwise_data)
    straight = _adapter(run_train(args, _training(tmp_path / "straight", max_steps=4)))

    class Crash(TrainerCallback):
        def on_step_end(self, training_args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt  # killed between checkpoint 2 and the end

    out = tmp_path / "resumed"
    saving = dict(max_steps=4, save_strategy="steps", save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run_train(args, _training(out, **saving), [Crash()])
    assert (out / "checkpoint-2").is_dir() and not (out / "adapter_model.safetensors").exists()
    (out / "checkpoint-3").mkdir()  # a kill while saving leaves a checkpoint without trainer_state.json

    with pytest.raises(ConfigError, match=r"other settings \(learning_rate: 0.005 -> 0.001\)"):
        run_train(args, _training(out, **saving | {"learning_rate": 1e-3}))
    resumed = _adapter(run_train(args, _training(out, **saving)))  # the same command again
    assert "skipping " + str(out / "checkpoint-3") + ": incomplete (no trainer_state.json" in caplog.text
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] == str(out / "checkpoint-2")
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], rtol=1e-5, atol=1e-7)
    before = (out / "adapter_model.safetensors").stat().st_mtime_ns
    run_train(args, _training(out, **saving, resume_from_checkpoint="true"))  # a finished run: nothing to do
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_llava, listwise_data, tmp_path):
    from perpo.training.trainer import TrainingDiverged

    out = tmp_path / "diverged"
    with pytest.raises(TrainingDiverged, match=r"training stopped at step \d: .* is (nan|inf)") as caught:
        run_train(
            _args(tiny_llava, listwise_data),
            _training(out, max_steps=6, learning_rate=1e30, save_strategy="steps", save_steps=1),
        )
    assert "Nothing was saved from this state; the last good checkpoint is " + str(out / "checkpoint-") in str(
        caught.value
    )
    assert not (out / "adapter_model.safetensors").exists() and not (out / "train_summary.json").exists()
    for checkpoint in out.glob("checkpoint-*"):
        weights = load_file(str(checkpoint / "adapter_model.safetensors"))
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_precomputed_reference_is_stored_reused_and_refused_when_stale(tiny_llava, listwise_data, tmp_path):
    from perpo.config import ConfigError

    ref_file = tmp_path / "ref.json"
    args = _args(tiny_llava, listwise_data, reference="precomputed", ref_logps_file=str(ref_file))
    adapter_precomputed = _adapter(run_train(args, _training(tmp_path / "pre")))
    stored = json.loads(ref_file.read_text())
    assert len(stored["logps"]) == 8 and all(len(v) == N for v in stored["logps"].values())
    online = _adapter(run_train(_args(tiny_llava, listwise_data), _training(tmp_path / "online")))
    for key in online:  # precomputed once == adapters disabled on the fly
        torch.testing.assert_close(online[key], adapter_precomputed[key], rtol=1e-3, atol=1e-5)
    stored["key"]["model"] = "0" * 64
    ref_file.write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="computed for another model or data"):
        run_train(args, _training(tmp_path / "stale"))


def test_start_up_errors_name_the_problem(tiny_llava, listwise_data, tmp_path, capsys):
    base = ["train", "--model_name_or_path", str(tiny_llava), "--output_dir", str(tmp_path / "o"), "--use_cpu", "true"]
    assert main([*base, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err
    assert main([*base, "--data", str(listwise_data), "--n", "5"]) == 2
    assert "fewer than N=5" in capsys.readouterr().err
    config = tmp_path / "typo.yaml"
    config.write_text(f"model_name_or_path: {tiny_llava}\ndata: {listwise_data}\nbetta: 0.2\n")
    assert main(["train", str(config), "--output_dir", str(tmp_path / "o")]) == 2
    assert "unknown option(s) 'betta' (did you mean 'beta'?)" in capsys.readouterr().err
    assert main([*base, "--data", str(listwise_data), "--loss", "ipo"]) == 2
    assert "loss must be one of" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--beta", "inf"], "--beta must be a finite number > 0, got inf"),
        (["--beta", "nan"], "--beta must be a finite number > 0, got nan"),
        (["--gamma", "nan"], "--gamma must be a finite number >= 0, got nan"),
        (["--beta", "0"], "--beta must be a finite number > 0, got 0.0"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number, got nan"),
        (["--num_train_epochs", "0"], "--num_train_epochs must be > 0, got 0.0"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1, got 0"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1, got 0"),
    ],
)
def test_bad_numbers_fail_at_parse_time_and_write_nothing(flags, message, tiny_llava, listwise_data, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["train", "--model_name_or_path", str(tiny_llava), "--data", str(listwise_data), "--n", str(N)]
    assert main([*argv, "--output_dir", str(out), "--use_cpu", "true", *flags]) == 2
    assert f"perpo train: error: {message}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("image", ["/nonexistent/img8.png", "not_an_image.png"])
def test_a_bad_image_fails_before_the_model_loads(image, tiny_llava, listwise_data, tmp_path, capsys):
    records = read_jsonl(listwise_data)
    records[7]["image"] = image
    data = write_jsonl(tmp_path / "train.jsonl", records)
    (tmp_path / "not_an_image.png").write_text("plain text")
    out = tmp_path / "o"
    argv = ["train", "--model_name_or_path", str(tmp_path / "no_model"), "--data", str(data), "--n", str(N)]
    assert main([*argv, "--output_dir", str(out), "--use_cpu", "true"]) == 2
    err = capsys.readouterr().err
    assert f"{data}:8: record {records[7]['id']!r}: image " in err
    assert ("not found" if image.startswith("/") else "does not open as an image") in err
    assert not out.exists()  # nothing written, and the (missing) model was never loaded


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_vl_trains_through_the_trainer_and_its_reference_memo_is_exact(
    family, tiny_model_of, listwise_data, tmp_path
):
    """Five steps over 8 lists (the fifth revisits lists, so the kept reference log-probs are used): LoRA on the
    language model, the merger(s) trained fully, and the same adapter as a run that recomputes the reference."""
    model = tiny_model_of(family)
    run = dict(max_steps=5)
    kept = _adapter(run_train(_args(model, listwise_data), _training(tmp_path / "kept", **run)))
    fresh = _args(model, listwise_data, cache_reference=False, cache_inputs=False, fuse_lora=False)
    recomputed = _adapter(run_train(fresh, _training(tmp_path / "fresh", **run)))
    assert any("language_model" in k and "lora_B" in k for k in kept)
    assert any("visual.merger." in k for k in kept) and not any("visual.blocks" in k for k in kept)
    assert any("visual.deepstack_merger_list.0." in k for k in kept) == (family == "qwen3_vl")
    for key in kept:
        torch.testing.assert_close(kept[key], recomputed[key], rtol=1e-5, atol=1e-6)


def _deepspeed_train(launcher: list[str], model, data, out, batch_size: int) -> str:
    """`perpo train` on DeepSpeed ZeRO-3 (CPU, gloo) started by `launcher`; returns its console output."""
    from perpo.configs import CONFIG_DIR

    cmd = [*launcher, "train", "--model_name_or_path", str(model), "--data", str(data)]
    cmd += ["--n", str(N), "--lora_r", "4", "--lora_alpha", "8", "--output_dir", str(out), "--max_steps", "2"]
    cmd += ["--per_device_train_batch_size", str(batch_size), "--learning_rate", "5e-3", "--use_cpu", "true"]
    cmd += ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true"]
    cmd += ["--deepspeed", str(CONFIG_DIR / "deepspeed" / "zero3.json")]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _logged(output: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf"'{key}': '([-0-9.e]+)'", output)]


# Qwen2.5-VL and LLaVA-NeXT take their ZeRO-3 step through the `deepspeed` launcher in test_recipes.py (their
# recipes, run as printed); the other families take it here.
ZERO3_HERE = [f for f in TINY_FAMILIES if f not in ("qwen2_5_vl", "llava_next")]


@pytest.mark.parametrize("family", ZERO3_HERE)
def test_deepspeed_zero3_and_export_through_the_cli(family, tiny_model_of, listwise_data, tmp_path):
    """The real DeepSpeed ZeRO-3 path (CPU accelerator, gloo) on every family, then a merged export that loads.

    For LLaVA also with two processes under torchrun (half the per-device batch, the same global batch of 2): the
    same losses and gradient norms, and the same adapter to fp32 tolerance."""
    from perpo.model.modeling import model_class

    tiny_model = tiny_model_of(family)
    out, merged = tmp_path / "zero3", tmp_path / "merged"
    printed = _deepspeed_train([sys.executable, "-m", "perpo.cli"], tiny_model, listwise_data, out, batch_size=2)
    weights = _adapter(out)
    assert max(v.abs().max() for k, v in weights.items() if "lora_B" in k) > 1e-3
    if family == "llava":
        # "--" ends torchrun's own options: its parser would take `--n` for one of them
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        torchrun += ["-m", "perpo.cli", "--"]
        printed_2 = _deepspeed_train(torchrun, tiny_model, listwise_data, tmp_path / "zero3_2", batch_size=1)
        for key in ("loss", "grad_norm"):
            assert len(_logged(printed, key)) == 2
            assert _logged(printed_2, key) == pytest.approx(_logged(printed, key), rel=1e-3), key
        two = _adapter(tmp_path / "zero3_2")
        assert two.keys() == weights.keys()
        for key in weights:
            torch.testing.assert_close(two[key], weights[key], rtol=1e-4, atol=2e-5)

    assert main(["export", str(out), "--out", str(merged)]) == 0
    from transformers import AutoProcessor

    model = model_class(merged).from_pretrained(merged)
    assert model.config.model_type == family
    AutoProcessor.from_pretrained(merged)
    assert not any("lora" in k for k in model.state_dict())


RECIPES = sorted(p for p in (Path(__file__).parents[2] / "perpo" / "configs").glob("*.yaml") if "_perpo_" in p.name)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_training_recipes_parse_and_name_existing_deepspeed_configs(recipe):
    """Every packaged recipe is a valid `perpo train` config (bf16/GPU switched off here, on a CPU)."""
    from perpo.config import load_yaml, parse_command

    args, training = parse_command(
        [PerPOArguments, TrainingArguments], [str(recipe), "--bf16", "false", "--use_cpu", "true", "--deepspeed", ""],
        "perpo train", "",
    )  # fmt: skip
    assert args.loss == "perpo" and args.n == (5 if "fox" in recipe.name else 20)
    assert args.lora_r == 128 and training.learning_rate == 5e-6
    deepspeed = load_yaml(recipe)["deepspeed"]
    assert (Path(__file__).parents[2] / deepspeed).is_file(), deepspeed


@pytest.mark.parametrize("reference", ["adapter", "copy"])
def test_build_trainer_builds_a_run_without_training_or_writing(reference, tiny_llava, listwise_data, tmp_path):
    from perpo.training.trainer import build_trainer, checked_records

    args = _args(tiny_llava, listwise_data, loss="perpo", reference=reference)
    records, root = checked_records(Path(args.data), "train", None, n=N)
    trainer = build_trainer(args, _training(tmp_path / "out"), records, root, data_sha256="x")
    trained = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name or "modules_to_save" in name for name in trained)
    assert (trainer.ref_model is None) == (reference == "adapter")  # adapter: the policy with adapters off
    batch = trainer.data_collator(records[:2])
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    assert not any((tmp_path / "out").rglob("*"))  # building writes nothing (transformers makes the folder)
