"""`perpo warmup`, the command that produced the committed base model, still trains and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from perpo.cli import main

pytestmark = pytest.mark.slow


def test_warmup_runs_a_few_steps_and_writes_a_loadable_model(tiny_llava, synth_data, tmp_path):
    out = tmp_path / "warm"
    args = ["warmup", "--data", str(synth_data), "--out", str(out), "--model", str(tiny_llava)]
    args += ["--steps", "4", "--batch_size", "4", "--eval_every", "2", "--eval_size", "4", "--save_every", "2"]
    assert main(args) == 0
    log = json.loads((out / "warmup_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2, 3, 4]
    assert [e["step"] for e in log["evals"]] == [2, 4]
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in log["steps"])
    before = LlavaForConditionalGeneration.from_pretrained(tiny_llava).state_dict()
    after = LlavaForConditionalGeneration.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not out.with_name("warm.checkpoint").exists()


def test_interrupted_warmup_resumes_to_the_same_weights(tiny_llava, synth_data, tmp_path, monkeypatch):
    common = ["--data", str(synth_data), "--model", str(tiny_llava), "--batch_size", "3", "--eval_every", "100"]
    assert main(["warmup", *common, "--out", str(tmp_path / "straight"), "--steps", "4", "--save_every", "2"]) == 0

    # Crash right after the step-2 checkpoint, then run the same command again.
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def crash_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_on_third)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        main(["warmup", *common, "--out", str(resumed), "--steps", "4", "--save_every", "2"])
    assert resumed.with_name("resumed.checkpoint").is_dir() and not resumed.exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert main(["warmup", *common, "--out", str(resumed), "--steps", "4", "--save_every", "2"]) == 0
    a = LlavaForConditionalGeneration.from_pretrained(tmp_path / "straight").state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(resumed).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_ocr_warmup_reads_synthetic_pages_through_the_fox_reader(tiny_llava, tmp_path, capsys):
    """`--task ocr`: the pages of `perpo data synth-ocr`, asked the Fox question, scored by edit distance."""
    pages = tmp_path / "pages"
    assert main(["data", "synth-ocr", "--out", str(pages), "--train", "8", "--val", "3", "--test", "0"]) == 0
    out = tmp_path / "ocr_base"
    args = ["warmup", "--task", "ocr", "--data", str(pages), "--out", str(out), "--model", str(tiny_llava)]
    assert main([*args, "--steps", "3", "--batch_size", "4", "--eval_every", "3", "--eval_size", "2"]) == 0
    assert "val edit distance" in capsys.readouterr().out
    log = json.loads((out / "warmup_log.json").read_text())
    (check,) = log["evals"]
    assert check["step"] == 3 and check["n"] == 2.0 and 0.0 <= check["edit_dist"] <= 1.0 and check["exact"] == 0.0
    assert log["config"]["task"] == "ocr" and len(log["steps"]) == 3
    assert LlavaForConditionalGeneration.from_pretrained(out) is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "ocr", "--loose_share", "0.5"], "applies to --task grounding only"),
        (["--task", "pages"], "--task must be one of"),
        (["--task", "ocr"], "render pages with `perpo data synth-ocr"),
    ],
)
def test_ocr_warmup_refuses_what_does_not_apply(extra, message, tmp_path, capsys):
    try:
        code = main(["warmup", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *extra])
    except SystemExit as parse_error:  # options are refused while parsing, a missing folder when reading it
        code = parse_error.code
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "out").exists()
