"""perpo.studies.study_n --quick on a miniature demo folder: every cell trained and scored, the outputs, resuming."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from perpo.io import read_jsonl, save_resolved, write_jsonl
from perpo.model.prompts import grounding_question
from perpo.objectives.boxes import format_box, gt_box_in_frame
from perpo.studies import study_n
from perpo.studies.demo import DemoConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

LIST_SIZE = 6  # what a `perpo demo --quick` samples per instruction


@pytest.fixture
def demo(tmp_path, tiny_llava, synth_data) -> Path:
    """The parts of a `perpo demo --quick` folder the study reads: data/, models/base, lists/train.jsonl and
    demo_config.json; test-size model, 8 lists of 6 jittered boxes with IoU-like rewards, a smaller LoRA."""
    demo = tmp_path / "demo"
    (demo / "models").mkdir(parents=True)
    (demo / "data").symlink_to(synth_data, target_is_directory=True)
    (demo / "models" / "base").symlink_to(tiny_llava, target_is_directory=True)
    rng = random.Random(0)
    records = []
    for index, row in enumerate(read_jsonl(synth_data / "synth_train.jsonl")[:8]):
        gt = gt_box_in_frame(row["bbox"], row["width"], row["height"], "padded")
        responses = [format_box([min(max(v + rng.uniform(-0.3, 0.3), 0), 1) for v in gt]) for _ in range(LIST_SIZE)]
        rewards = [round(rng.random(), 3) for _ in range(LIST_SIZE)]
        if index == 0:
            rewards[:2] = [0.0, 0.0]  # no spread among the first two responses: ranks nothing at N = 2
        records.append(
            {
                "id": row["id"], "task": "grounding", "image": str(synth_data / row["image"]),
                "question": grounding_question(row["expression"]), "answer": format_box(gt), "target": list(gt),
                "frame": "padded", "responses": responses, "rewards": rewards, "reward": "iou",
            }
        )  # fmt: skip
    write_jsonl(demo / "lists" / "train.jsonl", records)
    save_resolved(
        demo, "demo_config", DemoConfig(quick=True, lora_r=4, lora_alpha=8, batch_size=4, learning_rates=["dpo=1e-3"])
    )
    return demo


def test_quick_study_trains_every_cell_writes_its_outputs_and_resumes(demo, capsys):
    out = demo / "study_n"
    study = study_n.main([str(demo), "--quick"])
    printed = capsys.readouterr().out

    cells = {(c["n"], c["method"]): c for c in study["cells"]}
    val = len(read_jsonl(demo / "data" / "synth_val.jsonl"))  # under the 24 rows of --quick: all of them
    assert set(cells) == {(None, "base"), (2, "dpo"), (2, "perpo"), (4, "dpo"), (4, "perpo")}
    assert all(c["split"] == "val" and c["rows"] == val and 0 <= c["ap50"] <= 1 for c in cells.values())
    assert cells[(2, "perpo")]["lists"]["lists"] == 8 and cells[(2, "perpo")]["lists"]["ranked"] == 7
    assert 0 < cells[(2, "perpo")]["lists"]["margin_mean"] < cells[(4, "perpo")]["lists"]["margin_mean"] <= 1
    assert cells[(4, "dpo")]["lists"]["ranked"] == 8
    for n, method in [(2, "dpo"), (2, "perpo"), (4, "dpo"), (4, "perpo")]:
        config = json.loads((out / "models" / f"n{n}_{method}" / "train_config.json").read_text())
        assert config["PerPOArguments"]["n"] == n and config["PerPOArguments"]["loss"] == method
        assert config["PerPOArguments"]["lora_r"] == 4  # the demo's own settings
    assert json.loads((out / "study_n.json").read_text())["cells"] == study["cells"]

    table = (out / "study_n.md").read_text()
    assert table in printed
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == "| N | DPO AP@50 | PerPO AP@50 | PerPO − DPO | lists ranked |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 2", "| 4"]
    assert lines[2].endswith("| 7 of 8 |") and lines[2].split(" | ")[3].startswith(("+", "-"))
    assert "the base model:" in table and f"val split ({val} expressions)" in table
    Image.open(out / "study_n.png").verify()

    # a second run finds every cell in study_n.json: nothing trained or scored again, the same outputs
    adapters = sorted((out / "models").glob("*/adapter_model.safetensors"))
    written = [a.stat().st_mtime_ns for a in adapters]
    again = study_n.main([str(demo), "--quick"])
    assert again["cells"] == study["cells"] and [a.stat().st_mtime_ns for a in adapters] == written
    assert capsys.readouterr().out.count("already scored, kept") == 4


def test_list_sizes_beyond_the_demo_lists_are_skipped(demo, capsys):
    with pytest.raises(SystemExit):
        study_n.main([str(demo), "--ns", "8", "20"])
    assert "skipping N = [8, 20]" in capsys.readouterr().out


def test_a_quick_demo_config_is_not_clamped_back_to_six():
    cfg = DemoConfig(quick=True)
    assert cfg.n == LIST_SIZE and study_n.with_n(cfg, 20).n == 20 and cfg.n == LIST_SIZE


def test_a_demo_config_of_the_flat_lr_fields_keeps_its_settings(tmp_path):
    fields = {"seed": 3, "lr_dpo": 1e-3, "beta_perpo": 0.2, "lr_perpo_iter": 5e-5, "lr_gamma": 1.0}
    (tmp_path / "demo_config.json").write_text(json.dumps({"DemoConfig": fields}))
    cfg = study_n.demo_config(tmp_path)
    assert (cfg.seed, cfg.lr("dpo"), cfg.beta("perpo"), cfg.lr("perpo_iter"), cfg.lr("sft")) == (
        3,
        1e-3,
        0.2,
        5e-5,
        3e-4,
    )
