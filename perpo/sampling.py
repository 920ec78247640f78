"""`perpo sample`: N responses per instruction, append-only and resumable, behind a generation backend.

Determinism. Response i of instruction `id` is drawn from its own random stream keyed by (seed, id, i)
(`perpo.generation`), so what an instruction gets never depends on the batch it is in, the batch size, or where
a run was restarted. Batches are simply the remaining instructions in file order.

Resume. The output is JSONL, one line per finished instruction (the instruction record plus `responses` and
`sampler`), appended, flushed and fsynced batch by batch. A run killed at any moment (SIGKILL included) leaves at
most one torn last line: the next run truncates the file to its last complete line, checks every finished
record (valid JSON, known id, instruction unchanged), skips those ids and appends the rest. The finished file
is byte-identical to an uninterrupted run's: no duplicates, nothing lost. Image paths are rebased for the
output's folder (`perpo.data.schema.rebase_image`), so `perpo build-data` finds them from there.

Settings. `<out>.sampler.json` (written before the first line) holds the sampler settings, i.e. everything
that determines the responses: backend, model and adapter fingerprints, n, temperature, top_p, max_new_tokens,
seed, dtype and device type. Appending to an output made with other settings is refused with a message that
names the keys that differ. The same `sampler` dict is stored in every record; the sidecar also lists each run's
resolved config with the git SHA and package versions (`runs`). Batch size, limit, progress and
paths are not settings: they change how fast the file fills, not what it holds.

Backends. `GenerationBackend` is the interface (`generate(requests, n=, temperature=, ...) -> list[list[str]]`,
with the contract that the responses of a request depend only on it, the settings and the seed). `BACKENDS`
maps a name to a loader; `hf` (transformers `generate`, any family of `perpo.families`, optional LoRA
adapter merged in) is the one implemented. A vLLM backend is not included; docs/data.md says how to add one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from perpo.config import ConfigError, check_numbers, opt, run_metadata
from perpo.data.schema import RecordError, dump_record, load_records, rebase_image, resolve_image, validate_record
from perpo.modeling import DTYPES, checkpoint_fingerprint, load_model, load_processor, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

SETTINGS_SUFFIX = ".sampler.json"
# Fields an instruction record carries that sampling replaces (so a samples file can be re-sampled).
_SAMPLED_FIELDS = ("responses", "rewards", "reward", "sampler")
# A finished record must still match its instruction on these fields, or the instruction file has changed.
_INSTRUCTION_FIELDS = ("task", "image", "question", "answer", "target", "frame")


@dataclass
class SampleConfig:
    """Arguments of `perpo sample`."""

    model: str = opt(help="base model: a local HF checkpoint folder (any family of perpo.families)")
    instructions: str = opt(help="instruction JSONL (`perpo data instructions`; schema in perpo/data/schema.py)")
    out: str = opt(help="output samples JSONL: append-only; rerun the same command to resume after a stop")
    adapter: str = opt("", help="optional LoRA adapter folder (peft), merged into the model before sampling")
    n: int = opt(8, ge=1, help="responses per instruction (paper: 20)")
    temperature: float = opt(0.5, ge=0, help="sampling temperature (paper: 0.5); 0 = greedy")
    top_p: float = opt(1.0, gt=0, le=1, help="nucleus sampling mass (1.0 keeps every token)")
    max_new_tokens: int = opt(64, ge=1, help="longest response in tokens (page OCR needs thousands)")
    batch_size: int = opt(
        8, ge=1, help="instructions per generate call (each gives n rows); does not change the samples"
    )
    seed: int = opt(0, help="sampling seed; response i of instruction `id` is keyed by (seed, id, i)")
    limit: int = opt(0, ge=0, help="sample only the first LIMIT instructions of the file (0 = all)")
    image_root: str = opt("", help="folder relative image paths are read from (default: the instruction file's)")
    backend: str = opt("hf", help="generation backend: hf (transformers generate); see docs/data.md for vLLM")
    device: str = opt("auto", help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: str = opt("auto", help="model dtype: auto (bfloat16 on a GPU, float32 on CPU), float32, bfloat16, float16")
    progress: bool = opt(True, help="show a progress bar over instructions")

    def __post_init__(self):
        check_numbers(self)
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {sorted(BACKENDS)}, got {self.backend!r} (see docs/data.md)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.temperature == 0 and self.n > 1:
            logger.warning("temperature 0 is greedy decoding: all %d responses of a list will be identical", self.n)


@dataclass(frozen=True)
class SampleRequest:
    """One instruction as a backend sees it: a stable key (the record id), the question, the image file or None."""

    key: str
    question: str
    image: Path | None


class GenerationBackend(Protocol):
    """What `perpo sample` needs from a generation engine.

    Contract: the responses of a request depend only on the request, the arguments and `seed` (never on the other
    requests of the call), so sampling is reproducible whatever the batching or restart point.
    """

    def generate(
        self,
        requests: Sequence[SampleRequest],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        """For each request, its `n` responses (sample i drawn from the stream keyed by (seed, key, i))."""
        ...


BackendLoader = Callable[..., GenerationBackend]
"""`loader(model, *, adapter, device, dtype) -> GenerationBackend`."""


def load_model_and_processor(model: str, *, adapter: str = "", device: str = "cpu", dtype: str = "float32"):
    """A checkpoint of a supported family for sampling (`perpo.modeling`: class by `model_type`), with a LoRA adapter
    merged in (one set of weights: faster generation, the same model), and its processor.

    Raises:
        ConfigError: a folder is missing, or the checkpoint is not of a supported family.
    """
    if not Path(model).is_dir():
        raise ConfigError(f"model folder {model} not found (a local checkpoint saved with save_pretrained)")
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"adapter folder {adapter} has no adapter_config.json (a peft LoRA adapter)")
    try:
        loaded = load_model(model, dtype=dtype, adapter=adapter or None, merge_adapter=True, device=device)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return loaded, load_processor(model)


class HFBackend:
    """The `hf` backend: batched `transformers` generation with per-row Gumbel-max sampling (`perpo.generation`)."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    def generate(
        self,
        requests: Sequence[SampleRequest],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        from perpo.generation import GenerationRequest, generate
        from perpo.io import load_image
        from perpo.prompts import chat_prompt

        batch = [
            GenerationRequest(
                prompt=chat_prompt(self.processor, r.question, with_image=r.image is not None),
                image=load_image(r.image) if r.image is not None else None,
                key=r.key,
            )
            for r in requests
        ]
        return generate(
            self.model,
            self.processor,
            batch,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )


def load_hf_backend(model: str, *, adapter: str = "", device: str = "cpu", dtype: str = "float32") -> HFBackend:
    """The `hf` backend for a local checkpoint (+ optional LoRA adapter)."""
    return HFBackend(*load_model_and_processor(model, adapter=adapter, device=device, dtype=dtype))


BACKENDS: dict[str, BackendLoader] = {"hf": load_hf_backend}
"""Generation backends by name. A new engine (e.g. vLLM) registers a loader here; see docs/data.md."""


def sampler_settings(cfg: SampleConfig, device: str) -> dict[str, Any]:
    """The `sampler` dict: every setting that determines the responses (stored in each record and the sidecar)."""
    return {
        "backend": cfg.backend,
        "model": cfg.model,
        "model_fingerprint": checkpoint_fingerprint(cfg.model),
        "adapter": cfg.adapter,
        "adapter_fingerprint": checkpoint_fingerprint(cfg.adapter) if cfg.adapter else None,
        "n": cfg.n,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "dtype": str(resolve_dtype(cfg.dtype, device)).removeprefix("torch."),
        "device": device.split(":")[0],
    }


def settings_path(out: str | Path) -> Path:
    """The sidecar `<out>.sampler.json` holding the settings an output file was made with."""
    out = Path(out)
    return out.with_name(out.name + SETTINGS_SUFFIX)


def _comparable(settings: dict) -> dict:
    """Settings as compared on resume: a checkpoint is identified by its fingerprint, not by where it lies."""
    keys = {"model": "model_fingerprint", "adapter": "adapter_fingerprint"}
    return {k: v for k, v in settings.items() if not (k in keys and settings.get(keys[k]) is not None)}


def check_settings(out: Path, settings: dict) -> None:
    """Refuse to append to `out` when its sidecar records other settings (or is missing).

    Raises:
        ConfigError: naming the differing keys, both values, and the fix.
    """
    sidecar = settings_path(out)
    if not sidecar.is_file():
        raise ConfigError(
            f"{out} holds samples but its settings file {sidecar} is missing, so a resume cannot be checked. "
            "Write to a new --out, or delete the old output."
        )
    previous = json.loads(sidecar.read_text(encoding="utf-8"))["sampler"]
    old, new = _comparable(previous), _comparable(settings)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differing:
        changes = "; ".join(f"{k}: {old.get(k)!r} in the file, {new.get(k)!r} now" for k in differing)
        raise ConfigError(
            f"{out} was sampled with other settings ({changes}). Appending would mix two samplers in one file: "
            "use the original settings to resume, or write to a new --out."
        )


def recover_output(out: Path) -> list[bytes]:
    """Complete lines of an interrupted output; a torn last line (a write cut by a kill) is truncated away.

    Returns:
        The complete lines (with their newline), in file order.
    """
    if not out.exists():
        return []
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: dropping a torn last line of %d bytes (an interrupted write)", out, len(data) - end)
        with out.open("r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    return data[:end].splitlines(keepends=True)


def finished_ids(out: Path, lines: Sequence[bytes], instructions: dict[str, dict], settings: dict) -> set[str]:
    """Ids already sampled in `out`, after checking each line against the schema, the settings and its instruction.

    Raises:
        RecordError: a line is not valid, repeats an id, names an unknown id, or no longer matches its instruction.
    """
    done: set[str] = set()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(f"{out}:{number}: not valid JSON ({err.msg}); the file is damaged") from err
        validate_record(record, stage="samples", source=str(out), line=number)
        key = record["id"]
        if key in done:
            raise RecordError(f"{out}:{number}: id {key!r} appears twice")
        if key not in instructions:
            raise RecordError(f"{out}:{number}: id {key!r} is not in the instruction file; use a new --out")
        instruction = instructions[key]
        changed = [f for f in _INSTRUCTION_FIELDS if record.get(f) != instruction.get(f)]
        if changed:
            raise RecordError(
                f"{out}:{number}: field '{changed[0]}' of {key!r} differs from the instruction file: the "
                "instructions changed since this output was sampled; use a new --out"
            )
        if _comparable(record.get("sampler", {})) != _comparable(settings):
            raise RecordError(f"{out}:{number}: field 'sampler' differs from the run's settings {settings}")
        done.add(key)
    return done


def sampled_record(instruction: dict, responses: list[str], settings: dict) -> dict:
    """The output record: the instruction plus its responses (in sampling order) and the sampler settings."""
    record = {k: v for k, v in instruction.items() if k not in _SAMPLED_FIELDS}
    return record | {"responses": list(responses), "sampler": settings}


def check_box_units(records: Sequence[dict], model, processor, image_dir: Path, source: Path) -> None:
    """Grounding records must write boxes the way the model answers: normalised, or (`pixels`) in the frame its
    family answers in (the very image its processor makes, or a relative grid), else rewards would mix units.

    Raises:
        ConfigError: naming the record, both conventions and the command that rebuilds the instructions.
    """
    from PIL import Image

    from perpo.families import family_of

    family = family_of(model)
    for record in records:
        if record["task"] != "grounding" or not record["image"]:
            continue
        expected = None
        if family.pixel_boxes:  # only these answer in a frame that depends on the image
            with Image.open(resolve_image(record, image_dir)) as image:
                expected = family.answer_pixels(processor, *image.size)
        have = record.get("pixels")
        if (list(expected) if expected is not None else None) != have:
            want = f"a {expected[0]}x{expected[1]} frame" if expected else "normalised boxes"
            has = f"boxes in a {have[0]}x{have[1]} frame" if have else "normalised boxes"
            raise ConfigError(
                f"{source}: record {record['id']!r} writes {has}, but this {family.model_type} model answers in "
                f"{want}: rebuild the instructions for it with `perpo data instructions --model MODEL ...`"
            )


def run_sample(cfg: SampleConfig, backend: GenerationBackend | None = None) -> dict:
    """Sample `cfg.n` responses for every unfinished instruction and append them to `cfg.out`.

    Args:
        cfg: the command's configuration.
        backend: an already loaded backend (tests); by default `BACKENDS[cfg.backend]` loads the model, and only
            when something is left to sample.

    Returns:
        {"out", "total", "resumed", "sampled", "seconds"}.

    Raises:
        RecordError: a bad instruction or output line (names file, line and field).
        ConfigError: the output was made with other settings, or the model cannot be loaded.
    """
    from tqdm import tqdm

    from perpo.io import write_json

    began = time.perf_counter()
    source = Path(cfg.instructions)
    out = Path(cfg.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the samples file, e.g. {out / 'samples.jsonl'}")
    image_root = Path(cfg.image_root) if cfg.image_root else source.parent
    # Image paths are stored for the output's folder (relative when the image lies under it, else absolute).
    records = [rebase_image(r, image_root, out.parent) for r in load_records(source, stage="instructions")]
    by_id = {r["id"]: r for r in records}
    selected = records[: cfg.limit] if cfg.limit else records
    device = resolve_device(cfg.device)
    settings = sampler_settings(cfg, device)

    lines = recover_output(out)
    if lines:
        check_settings(out, settings)
        # Equal up to where the checkpoint lies: keep the file's own settings, so every record carries the same.
        settings = json.loads(settings_path(out).read_text(encoding="utf-8"))["sampler"]
        done = finished_ids(out, lines, by_id, settings)
        logger.info("%s: resuming after %d finished instructions", out, len(done))
    else:
        done = set()
    todo = [r for r in selected if r["id"] not in done]
    for record in todo:
        path = resolve_image(record, out.parent)
        if path is not None and not path.is_file():
            raise FileNotFoundError(
                f"{source}: image {path} of {record['id']!r} not found (relative paths are read from --image_root, "
                f"here {image_root})"
            )
    summary = {"out": str(out), "total": len(selected), "resumed": len(done & {r["id"] for r in selected})}
    if not todo:
        logger.info("%s: nothing left to sample", out)
        return summary | {"sampled": 0, "seconds": round(time.perf_counter() - began, 2)}

    if backend is None:
        backend = BACKENDS[cfg.backend](
            cfg.model, adapter=cfg.adapter, device=device, dtype=resolve_dtype(cfg.dtype, device)
        )
    if getattr(backend, "processor", None) is not None:
        check_box_units(todo, backend.model, backend.processor, out.parent, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The settings go first, so every line written is covered by them; each run adds its config and metadata.
    runs = json.loads(settings_path(out).read_text(encoding="utf-8"))["runs"] if lines else []
    run = {"SampleConfig": dataclasses.asdict(cfg), "meta": run_metadata(), "resumed_after": len(done)}
    write_json(settings_path(out), {"sampler": settings, "runs": [*runs, run]})
    bar = tqdm(
        total=len(selected), initial=summary["resumed"], desc="sampling", unit="instr", disable=not cfg.progress
    )
    with out.open("ab") as handle:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            requests = [SampleRequest(r["id"], r["question"], resolve_image(r, out.parent)) for r in batch]
            responses = backend.generate(
                requests,
                n=cfg.n,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed,
            )
            if len(responses) != len(batch) or any(len(r) != cfg.n for r in responses):
                raise RuntimeError(f"backend {cfg.backend!r} returned a wrong number of responses")
            # One write per batch, then flush + fsync: a kill leaves whole lines plus at most one torn line.
            handle.write(
                "".join(
                    dump_record(sampled_record(r, texts, settings)) for r, texts in zip(batch, responses, strict=True)
                ).encode("utf-8")
            )
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    return summary | {"sampled": len(todo), "seconds": round(time.perf_counter() - began, 2)}
