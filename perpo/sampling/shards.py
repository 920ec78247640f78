"""Data-parallel shards of `perpo sample`: rank r of W writes `<out>.part-R-of-W`; the parts merge into `out` in
instruction order, giving the bytes of a one-process run.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from perpo.config import ConfigError
from perpo.data.schema import load_records
from perpo.sampling.resume import _differences, recover_output, settings_path

if TYPE_CHECKING:
    from perpo.sampling.sample import SampleConfig

logger = logging.getLogger(__name__)


PART_PATTERN = re.compile(r"\.part-(\d+)-of-(\d+)$")


def part_path(out: str | Path, rank: int, world: int) -> Path:
    """The file rank `rank` of `world` writes its shard to, beside `out`: `<out>.part-R-of-W`."""
    out = Path(out)
    return out.with_name(f"{out.name}.part-{rank:03d}-of-{world:03d}")


def find_parts(out: str | Path) -> list[tuple[Path, int, int]]:
    """The part files beside `out`: (path, rank, world), by rank."""
    out = Path(out)
    found = []
    for path in out.parent.glob(f"{glob.escape(out.name)}.part-*-of-*"):
        match = PART_PATTERN.search(path.name)
        if match and path.name == part_path(out, int(match[1]), int(match[2])).name:
            found.append((path, int(match[1]), int(match[2])))
    return sorted(found, key=lambda part: part[1])


def merge_parts(cfg: SampleConfig) -> int:
    """Fold the part files of a sharded run into `cfg.out` and delete them.

    The merged file is `out`'s own lines followed by the parts' records in instruction-file order, so a fresh
    sharded run gives the bytes of a one-process run. Records already in `out` (a merge cut short after its
    rename) are skipped. The new `out` is written to a temporary file and renamed over the old one.

    Returns:
        How many records moved from the parts into `out`.

    Raises:
        ConfigError: a part was sampled with settings other than `out`'s or the other parts'.
    """
    from perpo.io import write_json

    out = Path(cfg.out)
    parts = find_parts(out)
    if not parts:
        return 0
    kept = recover_output(out)
    settings, runs, first = None, [], out
    if kept:
        sidecar = json.loads(settings_path(out).read_text(encoding="utf-8"))
        settings, runs = sidecar["sampler"], sidecar["runs"]
    done = {json.loads(line)["id"] for line in kept}
    new: dict[str, bytes] = {}
    for path, _, _ in parts:
        lines = recover_output(path)
        if not lines:
            continue
        sidecar = json.loads(settings_path(path).read_text(encoding="utf-8"))
        if settings is None:
            settings, first = sidecar["sampler"], path
        changes = _differences(sidecar["sampler"], settings, f"in {first}")
        if changes:
            raise ConfigError(
                f"{path} was sampled with other settings than {first} ({changes}): the shards come from different "
                "runs. Delete the stray part file, or resume it with its own settings before merging."
            )
        runs += sidecar["runs"]
        for line in lines:
            key = json.loads(line)["id"]
            if key not in done:
                new.setdefault(key, line)
    if new:
        order = {r["id"]: i for i, r in enumerate(load_records(Path(cfg.instructions), stage="instructions"))}
        write_json(settings_path(out), {"sampler": settings, "runs": runs})
        tmp = out.with_name(out.name + ".merging")
        with tmp.open("wb") as handle:
            handle.write(b"".join(kept))
            handle.write(b"".join(new[k] for k in sorted(new, key=lambda k: order.get(k, len(order)))))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    for path, _, _ in parts:
        path.unlink()
        settings_path(path).unlink(missing_ok=True)
    logger.info("%s: merged %d instructions from %d part files", out, len(new), len(parts))
    return len(new)
