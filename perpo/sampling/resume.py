"""What makes `perpo sample` resumable: the settings sidecar (`<out>.sampler.json`) that an output may only be
appended to with, the recovery of a torn last line, and the finished instructions a rerun skips.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perpo.config import ConfigError
from perpo.data.schema import RecordError, validate_record
from perpo.model.modeling import (
    checkpoint_fingerprint,
    resolve_dtype,
)

if TYPE_CHECKING:
    from perpo.sampling.sample import SampleConfig

logger = logging.getLogger(__name__)


SETTINGS_SUFFIX = ".sampler.json"


# Fields an instruction record carries that sampling replaces (so a samples file can be re-sampled).
_SAMPLED_FIELDS = ("responses", "rewards", "reward", "sampler")


# A finished record must still match its instruction on these fields, or the instruction file has changed.
_INSTRUCTION_FIELDS = ("task", "image", "question", "answer", "target", "frame")


def sampler_settings(cfg: SampleConfig, device: str) -> dict[str, Any]:
    """The `sampler` dict: every setting that determines the responses (stored in each record and the sidecar)."""
    from perpo.model.generation import SAMPLING_DEFAULTS

    engine = {"engine": {"tensor_parallel_size": cfg.tensor_parallel_size} | json.loads(cfg.vllm_args or "{}")}
    return (engine if cfg.backend == "vllm" else {}) | {
        "backend": cfg.backend,
        "model": cfg.model,
        "model_fingerprint": checkpoint_fingerprint(cfg.model),
        "adapter": cfg.adapter,
        "adapter_fingerprint": checkpoint_fingerprint(cfg.adapter) if cfg.adapter else None,
        "n": cfg.n,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        **SAMPLING_DEFAULTS,  # set by both backends, never taken from the checkpoint's generation_config
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
    changes = _differences(json.loads(sidecar.read_text(encoding="utf-8"))["sampler"], settings, "now")
    if changes:
        raise ConfigError(
            f"{out} was sampled with other settings ({changes}). Appending would mix two samplers in one file: "
            "use the original settings to resume, or write to a new --out."
        )


def _differences(previous: dict, settings: dict, label: str) -> str:
    """The settings that differ, as "key: <in the file> in the file, <other> <label>; ..." ("" when none)."""
    old, new = _comparable(previous), _comparable(settings)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} in the file, {new.get(k)!r} {label}" for k in differing)


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


def _file_settings(out: Path) -> dict:
    return json.loads(settings_path(out).read_text(encoding="utf-8"))["sampler"]
