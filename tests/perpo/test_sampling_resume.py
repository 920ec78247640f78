"""`perpo sample` bookkeeping with a fake backend: output format, resume after a torn write, refusing other settings.

The model-backed checks (batch-size invariance with the real `hf` backend, SIGKILL resume through the CLI, spread
on the warmed-up model) are in tests/integration/test_sampling.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from perpo.config import ConfigError
from perpo.data.schema import RecordError, dump_record, load_records
from perpo.model.modeling import checkpoint_fingerprint as fingerprint
from perpo.sampling.resume import recover_output, settings_path
from perpo.sampling.sample import SampleConfig, run_sample
from perpo.sampling.shards import find_parts, merge_parts, part_path


class FakeBackend:
    """Responses that depend only on (key, seed, index, temperature), like the real backend's contract."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    def generate(self, requests, *, n, temperature, top_p, max_new_tokens, seed):
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("killed")
        self.calls.append([r.key for r in requests])
        for r in requests:
            assert r.image is None or r.image.is_file()
        return [[f"{r.key}|{seed}|{i}|{temperature}|é" for i in range(n)] for r in requests]


@pytest.fixture
def data(tmp_path) -> Path:
    """An instruction file of 7 OCR pages (images in the same folder) and a fake model folder."""
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "page.png")
    records = [
        {
            "id": f"p{i}",
            "task": "ocr",
            "image": "page.png",
            "question": "OCR this image:",
            "answer": "t",
            "target": "t",
        }
        for i in range(7)
    ]
    (folder / "inst.jsonl").write_text("".join(dump_record(r) for r in records))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava"}')
    (model / "model.safetensors").write_bytes(b"weights")
    return folder


def config(data: Path, out: Path, **kwargs) -> SampleConfig:
    values = dict(
        model=str(data.parent / "model"),
        instructions=str(data / "inst.jsonl"),
        out=str(out),
        n=3,
        batch_size=2,
        progress=False,
        device="cpu",
    )
    return SampleConfig(**(values | kwargs))


@pytest.fixture
def reference(data, tmp_path) -> bytes:
    out = tmp_path / "reference" / "samples.jsonl"
    summary = run_sample(config(data, out), backend=FakeBackend())
    assert summary["sampled"] == 7 and summary["resumed"] == 0
    return out.read_bytes()


def test_output_records(data, tmp_path, reference):
    out = tmp_path / "reference" / "samples.jsonl"
    records = load_records(out, stage="samples", n=3)
    assert [r["id"] for r in records] == [f"p{i}" for i in range(7)]
    first = records[0]
    assert first["responses"] == ["p0|0|0|0.5|é", "p0|0|1|0.5|é", "p0|0|2|0.5|é"]
    assert first["image"] == str(data / "page.png")  # rebased: the output lives in another folder
    sampler = first["sampler"]
    assert sampler | {"model_fingerprint": None} == {
        "backend": "hf",
        "model": str(data.parent / "model"),
        "model_fingerprint": None,
        "adapter": "",
        "adapter_fingerprint": None,
        "n": 3,
        "temperature": 0.5,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_new_tokens": 64,
        "seed": 0,
        "dtype": "float32",
        "device": "cpu",
    }
    assert len(sampler["model_fingerprint"]) == 16
    side = json.loads(settings_path(out).read_text())
    assert side["sampler"] == sampler and side["runs"][0]["SampleConfig"]["batch_size"] == 2
    assert "git_sha" in side["runs"][0]["meta"] and side["runs"][0]["resumed_after"] == 0
    assert reference.decode("utf-8").count("\n") == 7


def test_resume_after_a_torn_write_equals_an_uninterrupted_run(data, tmp_path, reference):
    out = tmp_path / "reference" / "samples.jsonl"
    torn = tmp_path / "torn" / "samples.jsonl"
    torn.parent.mkdir()
    lines = reference.splitlines(keepends=True)
    torn.write_bytes(b"".join(lines[:3]) + lines[3][:25])  # a kill in the middle of line 4
    shutil.copy(settings_path(out), settings_path(torn))
    backend = FakeBackend()
    summary = run_sample(config(data, torn, batch_size=3), backend=backend)
    assert summary["resumed"] == 3 and summary["sampled"] == 4
    assert backend.calls == [["p3", "p4", "p5"], ["p6"]]
    assert torn.read_bytes() == reference
    runs = json.loads(settings_path(torn).read_text())["runs"]
    assert [r["resumed_after"] for r in runs] == [0, 3]
    assert run_sample(config(data, torn), backend=FakeBackend())["sampled"] == 0  # finished: nothing to do


def test_crash_mid_run_then_resume(data, tmp_path, reference):
    out = tmp_path / "crash" / "samples.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_sample(config(data, out, batch_size=2), backend=FakeBackend(fail_on_call=2))
    assert out.read_bytes().count(b"\n") == 4
    run_sample(config(data, out, batch_size=5), backend=FakeBackend())
    assert out.read_bytes() == reference


def test_limit_then_all(data, tmp_path, reference):
    out = tmp_path / "limit" / "samples.jsonl"
    assert run_sample(config(data, out, limit=3), backend=FakeBackend())["total"] == 3
    run_sample(config(data, out, limit=2), backend=FakeBackend())  # nothing new
    assert out.read_bytes().count(b"\n") == 3
    run_sample(config(data, out), backend=FakeBackend())
    assert out.read_bytes() == reference


def test_recover_output_only_truncates_a_torn_tail(tmp_path):
    path = tmp_path / "s.jsonl"
    assert recover_output(path) == []
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    assert recover_output(path) == [b'{"a": 1}\n', b'{"b": 2}\n']
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    path.write_bytes(b'{"c"')
    assert recover_output(path) == [] and path.read_bytes() == b""


@pytest.mark.parametrize(
    ("change", "key"),
    [({"temperature": 0.7}, "temperature"), ({"seed": 1}, "seed"), ({"n": 4}, "n"), ({"top_p": 0.9}, "top_p")],
)
def test_other_settings_are_refused(data, tmp_path, reference, change, key):
    out = tmp_path / "reference" / "samples.jsonl"
    with pytest.raises(ConfigError, match=rf"other settings \({key}: .* in the file, .* now\)") as info:
        run_sample(config(data, out, **change), backend=FakeBackend())
    assert "new --out" in str(info.value)
    assert out.read_bytes() == reference


def test_a_changed_model_is_refused_but_a_moved_one_is_not(data, tmp_path, reference):
    out = tmp_path / "reference" / "samples.jsonl"
    moved = tmp_path / "moved_model"
    shutil.copytree(data.parent / "model", moved)
    assert fingerprint(moved) == fingerprint(data.parent / "model")
    assert run_sample(config(data, out, model=str(moved)), backend=FakeBackend())["sampled"] == 0
    (moved / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(ConfigError, match="model_fingerprint"):
        run_sample(config(data, out, model=str(moved)), backend=FakeBackend())


def test_missing_settings_file_is_refused(data, tmp_path, reference):
    out = tmp_path / "reference" / "samples.jsonl"
    settings_path(out).unlink()
    with pytest.raises(ConfigError, match="settings file .* is missing"):
        run_sample(config(data, out), backend=FakeBackend())


def test_damaged_or_foreign_outputs_are_refused(data, tmp_path, reference):
    out = tmp_path / "reference" / "samples.jsonl"
    side = settings_path(out).read_bytes()
    lines = reference.splitlines(keepends=True)

    def attempt(content: bytes, message: str) -> None:
        out.write_bytes(content)
        settings_path(out).write_bytes(side)
        with pytest.raises(RecordError, match=message):
            run_sample(config(data, out), backend=FakeBackend())

    attempt(lines[0] + b"not json\n", rf"{out}:2: not valid JSON")
    attempt(lines[0] + lines[0], rf"{out}:2: id 'p0' appears twice")
    foreign = json.loads(lines[1]) | {"id": "zzz"}
    attempt(lines[0] + dump_record(foreign).encode(), rf"{out}:2: id 'zzz' is not in the instruction file")
    changed = json.loads(lines[1]) | {"question": "Read it"}
    attempt(lines[0] + dump_record(changed).encode(), rf"{out}:2: field 'question' of 'p1' differs")
    broken = {k: v for k, v in json.loads(lines[1]).items() if k != "responses"}
    attempt(lines[0] + dump_record(broken).encode(), rf"{out}:2: field 'responses'")


def test_missing_image_fails_before_anything_is_written(data, tmp_path):
    (data / "page.png").unlink()
    out = tmp_path / "new" / "samples.jsonl"
    with pytest.raises(FileNotFoundError, match=r"image .*page.png of 'p0' not found"):
        run_sample(config(data, out), backend=FakeBackend())
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_image_root_option(data, tmp_path):
    moved = tmp_path / "images"
    moved.mkdir()
    shutil.move(data / "page.png", moved / "page.png")
    out = data / "samples.jsonl"
    run_sample(config(data, out, image_root=str(moved)), backend=FakeBackend())
    assert load_records(out, stage="samples")[0]["image"] == str(moved / "page.png")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be >= 1"),
        ({"temperature": -1.0}, "--temperature must be a finite number >= 0, got -1.0"),
        ({"temperature": float("nan")}, "--temperature must be a finite number >= 0, got nan"),
        ({"top_p": 0.0}, "--top_p must be a finite number > 0 and <= 1, got 0.0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"backend": "tgi"}, "backend must be one of \\[.hf., .vllm.\\]"),
        ({"dtype": "fp8"}, "dtype must be one of"),
    ],
)
def test_config_checks(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SampleConfig(model="m", instructions="i", out="o", **kwargs)


def test_output_must_be_a_file(data, tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        run_sample(config(data, tmp_path), backend=FakeBackend())


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "perpo" / "configs").glob("sample_*.yaml")))
def test_packaged_sample_configs_parse(path):
    from perpo.config import parse_command

    (cfg,) = parse_command([SampleConfig], [str(path)], prog="perpo sample", description="")
    assert cfg.n >= 1 and cfg.instructions and cfg.out


def test_cli_sample_reports_bad_instructions(tmp_path, capsys):
    from perpo.cli import main

    bad = tmp_path / "inst.jsonl"
    bad.write_text('{"id": "a", "task": "grounding"}\n')
    argv = ["sample", "--model", str(tmp_path), "--instructions", str(bad), "--out", str(tmp_path / "o.jsonl")]
    assert main(argv) == 2
    assert f"{bad}:1: field 'image' is missing" in capsys.readouterr().err


# --- shards (data-parallel sampling) ----------------------------------------------------------------------------


def as_rank(monkeypatch, rank: int, world: int) -> None:
    """This process as rank `rank` of `world` under a launcher that gives no rendezvous (no MASTER_ADDR)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.delenv("MASTER_ADDR", raising=False)


def test_shards_merge_to_the_one_process_bytes(data, tmp_path, reference, monkeypatch):
    out = tmp_path / "shards" / "samples.jsonl"
    calls = {}
    for rank in (2, 0, 1):  # any order, any time
        as_rank(monkeypatch, rank, 3)
        backend = FakeBackend()
        summary = run_sample(config(data, out), backend=backend)
        calls[rank] = [key for call in backend.calls for key in call]
        assert summary["shards"] == 3 and not out.exists()
    assert calls == {0: ["p0", "p3", "p6"], 1: ["p1", "p4"], 2: ["p2", "p5"]}
    assert [p.name for p, _, _ in find_parts(out)] == [f"samples.jsonl.part-00{r}-of-003" for r in range(3)]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    backend = FakeBackend()
    summary = run_sample(config(data, out), backend=backend)  # alone: merges, then nothing is left
    assert summary["merged"] == 7 and summary["sampled"] == 0 and backend.calls == []
    assert out.read_bytes() == reference
    assert find_parts(out) == [] and sorted(p.name for p in out.parent.iterdir()) == [
        out.name,
        f"{out.name}.sampler.json",
    ]
    runs = json.loads(settings_path(out).read_text())["runs"]
    assert sorted(r["shard"]["rank"] for r in runs) == [0, 1, 2] and all(r["shard"]["world"] == 3 for r in runs)


def test_a_shard_resumes_its_torn_part_and_skips_what_out_holds(data, tmp_path, reference, monkeypatch):
    out = tmp_path / "resume" / "samples.jsonl"
    out.parent.mkdir()
    lines = reference.splitlines(keepends=True)
    out.write_bytes(lines[0])  # p0 finished by an earlier one-process run
    shutil.copy(settings_path(tmp_path / "reference" / "samples.jsonl"), settings_path(out))
    as_rank(monkeypatch, 0, 2)
    with pytest.raises(KeyboardInterrupt):
        run_sample(config(data, out, batch_size=1), backend=FakeBackend(fail_on_call=1))
    part = part_path(out, 0, 2)
    part.write_bytes(part.read_bytes() + b'{"id": "p4", "tor')  # killed mid-write
    backend = FakeBackend()
    run_sample(config(data, out, batch_size=1), backend=backend)
    assert backend.calls == [["p4"], ["p6"]]  # p0 is in out, p2 in the part, the torn p4 is redone
    as_rank(monkeypatch, 1, 2)
    run_sample(config(data, out), backend=FakeBackend())
    assert merge_parts(config(data, out)) == 6
    assert out.read_bytes() == reference


def test_a_merge_cut_short_after_its_rename_is_finished_without_duplicates(data, tmp_path, reference, monkeypatch):
    out = tmp_path / "cut" / "samples.jsonl"
    for rank in (0, 1):
        as_rank(monkeypatch, rank, 2)
        run_sample(config(data, out), backend=FakeBackend())
    stale = {p: p.read_bytes() for p, _, _ in find_parts(out)}
    assert merge_parts(config(data, out)) == 7
    for path, content in stale.items():  # the parts came back: the merge died before deleting them
        path.write_bytes(content)
        shutil.copy(settings_path(out), settings_path(path))
    assert merge_parts(config(data, out)) == 0 and out.read_bytes() == reference and find_parts(out) == []


def test_shards_of_another_world_or_other_settings_are_refused(data, tmp_path, monkeypatch):
    out = tmp_path / "mixed" / "samples.jsonl"
    as_rank(monkeypatch, 0, 3)
    run_sample(config(data, out), backend=FakeBackend())
    as_rank(monkeypatch, 1, 2)
    with pytest.raises(ConfigError, match=r"part-000-of-003 is a shard of a run with another number of processes"):
        run_sample(config(data, out), backend=FakeBackend())
    as_rank(monkeypatch, 1, 3)
    run_sample(config(data, out, seed=1), backend=FakeBackend())
    with pytest.raises(
        ConfigError,
        match=r"part-001-of-003 was sampled with other settings than .*part-000-of-003 \(seed: 1 in the file, 0 in",
    ):
        merge_parts(config(data, out))
    with pytest.raises(ConfigError, match="leave --processes at 1 there"):
        run_sample(config(data, out, processes=2), backend=FakeBackend())


@pytest.mark.parametrize(
    ("environ", "message"),
    [({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not a rank of WORLD_SIZE=2"), ({"RANK": "x"}, "must be integers")],
)
def test_launcher_variables_are_checked(environ, message):
    from perpo.distributed import launch_from_env

    with pytest.raises(ConfigError, match=message):
        launch_from_env(environ)
    launch = launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "node0"})
    assert (launch.rank, launch.world, launch.local_rank, launch.rendezvous) == (3, 4, 1, True)
