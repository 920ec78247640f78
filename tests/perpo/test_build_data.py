"""`perpo build-data`: rewards beside responses, the margin filter, the target count, statistics and the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perpo.cli import main
from perpo.config import ConfigError
from perpo.data.build import BuildDataConfig, RewardError, best_of_n, run_build_data
from perpo.data.schema import RecordError, dump_record, load_records, resolve_image

TARGET = [0.2, 0.2, 0.6, 0.6]
# IoUs with TARGET (area 0.16): itself 1.0; [0.2, 0.2, 0.6, 0.4] covers half -> 0.5; a disjoint box -> 0.0.
FULL, HALF, MISS = "[0.2, 0.2, 0.6, 0.6]", "It is [0.2, 0.2, 0.6, 0.4].", "[0.7, 0.7, 0.9, 0.9]"


def grounding(key: str, responses: list[str], dataset: str = "refcoco", image: str = "img.png") -> dict:
    return {
        "id": key,
        "task": "grounding",
        "image": image,
        "question": "Please provide the bounding box coordinate of the region this sentence describes: x.",
        "answer": "[0.20, 0.20, 0.60, 0.60]",
        "target": TARGET,
        "frame": "padded",
        "responses": responses,
        "sampler": {"n": len(responses)},
        "meta": {"dataset": dataset},
    }


def write_samples(folder: Path, records: list[dict]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(folder / "img.png")
    path = folder / "samples.jsonl"
    path.write_text("".join(dump_record(r) for r in records), encoding="utf-8")
    return path


def build(samples: Path, out: Path, **kwargs) -> dict:
    return run_build_data(BuildDataConfig(samples=str(samples), out=str(out), **kwargs))


def test_rewards_are_stored_beside_responses_in_sampling_order(tmp_path):
    samples = write_samples(tmp_path / "s", [grounding("a", [HALF, "no box", FULL, MISS])])
    stats = build(samples, tmp_path / "out", margin=0.5)
    (record,) = load_records(tmp_path / "out" / "train.jsonl", stage="train", n=4)
    assert record["responses"] == [HALF, "no box", FULL, MISS]
    assert record["rewards"] == pytest.approx([0.5, 0.0, 1.0, 0.0])
    assert record["reward"] == "iou" and record["sampler"] == {"n": 4}
    assert stats["responses"]["parse_failures"] == 1 and stats["responses"]["parse_fail_rate"] == 0.25


def test_margin_filter_edges(tmp_path):
    # Rewards 0.9 and 0.1 (IoU of crafted boxes) have a float margin of 0.8 minus round-off: kept at m = 0.8.
    target_area = 0.4 * 0.4
    records = [
        grounding("exact", [FULL, MISS]),  # margin 1.0
        grounding("tied", [FULL, FULL, FULL]),  # margin 0: dropped whatever m > 0
        grounding("half", [HALF, MISS]),  # margin 0.5
        grounding("fails", ["none", "nothing"]),  # all parse failures: margin 0
    ]
    samples = write_samples(tmp_path / "s", records)
    stats = build(samples, tmp_path / "out")
    kept = [r["id"] for r in load_records(tmp_path / "out" / "train.jsonl")]
    assert kept == ["exact"] and stats["margin_threshold"] == 0.8
    assert stats["lists"] == {
        "in": 4,
        "passing_margin": 1,
        "kept": 1,
        "dropped_by_margin": 3,
        "dropped_by_target_count": 0,
    }
    assert build(samples, tmp_path / "out2", margin=0.5)["lists"]["kept"] == 2
    assert build(samples, tmp_path / "out3", margin=0.0)["lists"]["kept"] == 4
    assert target_area == pytest.approx(0.16)
    with pytest.raises(ConfigError, match=r"no list reaches margin 1.5 \(the widest spans 1.000 in iou reward\)"):
        build(samples, tmp_path / "out4", margin=1.5)  # nothing to train on is an error, not an empty file
    assert not (tmp_path / "out4").exists()
    with pytest.raises(ConfigError, match="--margin must be a finite number >= 0, got -0.5"):
        build(samples, tmp_path / "out5", margin=-0.5)


def test_margin_tolerance_keeps_a_margin_equal_up_to_round_off(tmp_path):
    # IoU 0.9 - 0.1 in floats: box widths chosen so the two IoUs are 0.9 and 0.1 up to round-off.
    nine = "[0.2, 0.2, 0.56, 0.6]"  # width 0.36 of 0.4 -> IoU 0.9
    one = "[0.2, 0.2, 0.24, 0.6]"  # width 0.04 of 0.4 -> IoU 0.1
    samples = write_samples(tmp_path / "s", [grounding("a", [nine, one])])
    stats = build(samples, tmp_path / "out")
    (record,) = load_records(tmp_path / "out" / "train.jsonl")
    margin = max(record["rewards"]) - min(record["rewards"])
    assert margin != 0.8 and margin == pytest.approx(0.8)  # not exactly 0.8 in floats
    assert stats["lists"]["kept"] == 1


def test_target_count_takes_an_equal_share_per_dataset(tmp_path):
    records = [
        grounding(f"{d}{i}", [FULL, MISS], dataset=d) for d, k in (("a", 10), ("b", 2), ("c", 10)) for i in range(k)
    ]
    samples = write_samples(tmp_path / "s", records)
    stats = build(samples, tmp_path / "out", target_count=8, seed=1)
    kept = load_records(tmp_path / "out" / "train.jsonl")
    by = {d: sum(r["meta"]["dataset"] == d for r in kept) for d in "abc"}
    assert by == {"a": 3, "b": 2, "c": 3}
    assert stats["lists"]["dropped_by_target_count"] == 14
    assert stats["by_dataset"]["b"] == {"in": 2, "kept": 2, "passing_margin": 2}
    again = load_records(
        build(samples, tmp_path / "again", target_count=8, seed=1) and tmp_path / "again" / "train.jsonl"
    )
    assert [r["id"] for r in again] == [r["id"] for r in kept]
    order = [r["id"] for r in records]
    assert [order.index(r["id"]) for r in kept] == sorted(order.index(r["id"]) for r in kept)
    assert build(samples, tmp_path / "all", target_count=100)["lists"]["kept"] == 22


def test_stats_json_and_png(tmp_path):
    from PIL import Image

    records = [grounding(f"r{i}", [FULL, HALF, MISS, "none"][i % 4 :] + [MISS] * (i % 4)) for i in range(8)]
    samples = write_samples(tmp_path / "s", records)
    stats = build(samples, tmp_path / "out", bins=10)
    on_disk = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert on_disk == json.loads(json.dumps(stats))
    for key in ("lists", "responses", "reward", "list_margin", "best_of_n", "by_dataset", "margin_threshold", "task"):
        assert key in on_disk
    hist = on_disk["reward"]["histogram"]
    assert len(hist["edges"]) == 11 and sum(hist["all"]) == on_disk["responses"]["total"] == 32
    assert set(on_disk["list_margin"]["quantiles"]) == {"0", "0.1", "0.25", "0.5", "0.75", "0.9", "1"}
    assert on_disk["best_of_n"]["k"] == [1, 2, 4]
    assert on_disk["best_of_n"]["hit_rate"][-1] >= on_disk["best_of_n"]["hit_rate"][0]
    with Image.open(tmp_path / "out" / "stats.png") as image:
        assert image.format == "PNG" and image.size[0] > 600
    config = json.loads((tmp_path / "out" / "build_config.json").read_text())
    assert config["BuildDataConfig"]["bins"] == 10


def test_best_of_n_uses_the_first_k_responses():
    curve = best_of_n([[0.0, 0.6, 0.2, 1.0], [0.4, 0.1, 0.0, 0.0]], hit=0.5)
    assert curve["k"] == [1, 2, 4]
    assert curve["mean_best"] == pytest.approx([0.2, 0.5, 0.7])
    assert curve["hit_rate"] == [0.0, 0.5, 0.5]
    assert best_of_n([[0.1] * 20])["k"] == [1, 2, 4, 8, 16, 20]


def test_ocr_lists_use_edit_distance_and_their_margin(tmp_path):
    record = {
        "id": "p1",
        "task": "ocr",
        "image": "img.png",
        "question": "OCR this image:",
        "answer": "hello world",
        "target": "hello world",
        "responses": ["hello world", "hello worle", ""],
        "meta": {"dataset": "fox"},
    }
    samples = write_samples(tmp_path / "s", [record])
    stats = build(samples, tmp_path / "out")
    (kept,) = load_records(tmp_path / "out" / "train.jsonl")
    assert kept["reward"] == "ocr" and kept["rewards"] == pytest.approx([1.0, 1 - 1 / 11, 0.0])
    assert stats["margin_threshold"] == 0.04 and "hit_rate" not in stats["best_of_n"]
    assert stats["responses"]["parse_failures"] == 1  # the empty response


def test_first_n_responses(tmp_path):
    samples = write_samples(tmp_path / "s", [grounding("a", [FULL, FULL, MISS]), grounding("b", [MISS, FULL, FULL])])
    stats = build(samples, tmp_path / "out", n=2)
    (kept,) = load_records(tmp_path / "out" / "train.jsonl")
    assert kept["id"] == "b" and kept["responses"] == [MISS, FULL] and stats["best_of_n"]["k"] == [1, 2]
    with pytest.raises(RecordError, match=r"samples.jsonl:1: field 'responses' holds 3 responses, fewer than N=4"):
        build(samples, tmp_path / "out4", n=4)


def test_custom_reward_by_dotted_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length(response, target):\n    return len(response) / 100\n\n"
        "def broken(response, target):\n    return float('nan')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    samples = write_samples(tmp_path / "s", [grounding("a", ["x" * 10, "x" * 90])])
    with pytest.raises(ConfigError, match="has no default margin: pass --margin"):
        build(samples, tmp_path / "out", reward="my_rewards:length")
    stats = build(samples, tmp_path / "out", reward="my_rewards:length", margin=0.5)
    assert stats["lists"]["kept"] == 1 and stats["reward_name"] == "my_rewards:length"
    with pytest.raises(RecordError, match=r"samples.jsonl:1: reward 'my_rewards:broken' gave nan for response 0"):
        build(samples, tmp_path / "bad", reward="my_rewards:broken", margin=0.5)
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        build(samples, tmp_path / "bad", reward="nope")
    assert not (tmp_path / "bad").exists()


def test_a_reward_that_raises_names_the_file_line_and_record(tmp_path, monkeypatch, capsys):
    (tmp_path / "raising_rewards.py").write_text(
        "def picky(response, target):\n    if 'x' in response:\n        raise KeyError('box')\n    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    samples = write_samples(tmp_path / "s", [grounding("a", [FULL, MISS]), grounding("b", [FULL, "x"])])
    with pytest.raises(RewardError) as err:
        build(samples, tmp_path / "out", reward="raising_rewards:picky", margin=0.5)
    assert isinstance(err.value.__cause__, KeyError)
    argv = ["build-data", "--samples", str(samples), "--out", str(tmp_path / "out"), "--margin", "0.5"]
    assert main([*argv, "--reward", "raising_rewards:picky"]) == 2
    assert capsys.readouterr().err == (
        f"perpo build-data: error: {samples}:2: reward 'raising_rewards:picky' raised KeyError: 'box' on response 1 "
        "of 'b' (perpo -v shows the traceback)\n"
    )
    assert not (tmp_path / "out").exists()


def test_bad_input_leaves_no_output(tmp_path):
    ocr = {"id": "o", "task": "ocr", "image": "", "question": "q", "answer": "a", "target": "a", "responses": ["a"]}
    samples = write_samples(tmp_path / "s", [grounding("a", [FULL, MISS]), ocr])
    with pytest.raises(RecordError, match=r"samples.jsonl:2: field 'task' is 'ocr' but line 1 is 'grounding'"):
        build(samples, tmp_path / "out")
    samples.write_text(samples.read_text().splitlines()[0] + "\n" + '{"id": "b", "task": "grounding"}\n')
    with pytest.raises(RecordError, match=r"samples.jsonl:2: field 'image' is missing"):
        build(samples, tmp_path / "out")
    samples = write_samples(tmp_path / "s2", [grounding("a", [FULL, MISS], image="gone.png")])
    with pytest.raises(FileNotFoundError, match=r"samples.jsonl:1: image .*gone.png of 'a' not found"):
        build(samples, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert build(samples, tmp_path / "out", check_images=False)["lists"]["kept"] == 1


def test_image_paths_resolve_from_the_output_folder(tmp_path):
    samples = write_samples(tmp_path / "s", [grounding("a", [FULL, MISS])])
    build(samples, tmp_path / "s" / "built")
    build(samples, tmp_path / "elsewhere")
    inside = load_records(tmp_path / "s" / "built" / "train.jsonl")[0]
    outside = load_records(tmp_path / "elsewhere" / "train.jsonl")[0]
    assert inside["image"] == str((tmp_path / "s" / "img.png").absolute())
    assert resolve_image(outside, tmp_path / "elsewhere") == tmp_path / "s" / "img.png"
    build(samples, tmp_path / "s", margin=0.5)
    assert load_records(tmp_path / "s" / "train.jsonl")[0]["image"] == "img.png"


def test_cli_prints_a_summary(tmp_path, capsys):
    samples = write_samples(tmp_path / "s", [grounding("a", [FULL, MISS]), grounding("b", [HALF, HALF])])
    assert main(["build-data", "--samples", str(samples), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "kept 1 of 2 lists (1 pass margin 0.8); mean list margin 0.500" in out
    assert "best-of-k mean reward (iou): 1: 0.750, 2: 0.750" in out
    assert main(["build-data", "--samples", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "perpo" / "configs").glob("build_*.yaml")))
def test_packaged_build_configs_parse(path):
    from perpo.config import parse_command

    (cfg,) = parse_command([BuildDataConfig], [str(path)], prog="perpo build-data", description="")
    assert cfg.samples and cfg.out and cfg.margin in (0.8, 0.04)
