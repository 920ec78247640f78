"""`perpo build-data`: score sampled responses, keep the lists with enough spread, write the listwise train file.

Steps (the paper's data recipe):
    1. read the samples (`perpo sample` output; schema in `perpo.data.schema`), one task per file;
    2. score every response with the task's discriminative reward (`perpo.objectives.rewards`): IoU of the parsed box
       with the exact target in the record's frame (grounding), 1 - normalised edit distance (OCR), or a user reward
       named by dotted path; responses keep their sampling order and get their rewards beside them;
    3. keep a list when its data margin max(r) - min(r) reaches m (`passes_margin`; m = 0.8 grounding, 0.04 OCR
       by default);
    4. optionally cut to a target count: a seeded subsample with an equal share per `meta.dataset` (RefCOCO,
       RefCOCO+, RefCOCOg as in the paper; `perpo.data.sources.equal_share_sample`);
    5. write `<out>/train.jsonl` (train-stage records), `stats.json`, `stats.png` and `build_config.json`.

Everything is computed before anything is written, and each file is written atomically, so bad input leaves no
half-written output. Image paths are rebased so they resolve from `<out>` (`perpo.data.schema.rebase_image`).

`stats.json` keys:
    lists          in / passing_margin / kept, and what each filter dropped
    responses      total, per-list min and max, parse failures and their rate (grounding: no box parses;
                   OCR: empty response)
    reward         mean, mean best and mean worst per list, histogram of all responses and of kept lists
    list_margin    mean, quantiles, pass rate, histogram (the PNG draws the threshold m on it)
    best_of_n      mean best reward over the first k responses of every list (k = 1, 2, 4, ..., N), and for IoU
                   the best-of-k hit rate at IoU >= 0.5 (best-of-k AP@50): the potential PerPO harvests
    by_dataset     lists in / passing / kept per `meta.dataset`
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from perpo.config import ConfigError, check_numbers, check_spares_inputs, opt
from perpo.data.schema import RecordError, dump_record, load_records, rebase_image, resolve_image
from perpo.data.sources import equal_share_sample
from perpo.objectives.rewards import DEFAULT_MARGINS, TASK_REWARDS, get_reward, list_margin, passes_margin

logger = logging.getLogger(__name__)

OUTPUTS = ("train.jsonl", "stats.json", "stats.png", "build_config.json")
HIT_THRESHOLD = 0.5
"""IoU at which a grounding answer counts as right (AP@50), for the best-of-k hit rate."""
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


class RewardError(RecordError):
    """A reward raised on a record, or returned a value that is not a finite number; names file, line and id."""


@dataclass
class BuildDataConfig:
    """Arguments of `perpo build-data`."""

    samples: str = opt(help="samples JSONL from `perpo sample` (train-stage files are re-scored the same way)")
    out: str = opt(help="output folder: train.jsonl, stats.json, stats.png, build_config.json")
    reward: str = opt("", help="reward name (iou, ocr) or dotted path 'pkg.mod:fn'; default by task (iou / ocr)")
    margin: float | None = opt(
        None, ge=0, help="data margin m: keep a list when max - min reward >= m; default by reward (iou 0.8, ocr 0.04)"
    )
    target_count: int = opt(
        0, ge=0, help="keep at most this many lists: seeded subsample, equal share per dataset; 0 = all"
    )
    seed: int = opt(0, help="seed of the target-count subsample")
    n: int = opt(0, ge=0, help="use only the first n responses of each list (0 = all); lists with fewer are an error")
    image_root: str = opt("", help="folder relative image paths of the samples are read from (default: its folder)")
    check_images: bool = opt(True, help="fail when the image of a kept list is missing")
    exclude_eval: str = opt(
        "",
        help="comma-separated evaluation sets whose images must not be trained on, compared by the sha256 of the "
        "image file: a folder (its *.jsonl and *_page_ocr.json: `perpo data refcoco`'s output, a Fox folder), a "
        "JSONL with an `image` field, or a Fox page list (perpo/data/overlap.py)",
    )
    eval_overlap: Literal["refuse", "drop"] = opt(
        "refuse",
        help="what an instruction on an evaluation image does: refuse (stop, naming the overlap) or drop (leave "
        "those lists out, counted in stats.json)",
    )
    bins: int = opt(20, ge=1, help="histogram bins")

    def __post_init__(self):
        check_numbers(self)


def is_parse_failure(task: str, response: str) -> bool:
    """A grounding response with no readable box, or an empty OCR response."""
    if task == "grounding":
        from perpo.objectives.boxes import parse_box

        return parse_box(response, fmt="norm") is None
    return not response.strip()


def score_records(records: Sequence[dict], reward: str, source: str = "records") -> list[list[float]]:
    """Rewards of every response of every record with the reward named `reward`.

    Raises:
        RewardError: the reward raised, or returned something that is not a finite number (names the line and the
            record; a raised exception is chained, and logged with its traceback at DEBUG level: `perpo -v`).
    """
    fn = get_reward(reward)
    scored = []
    for number, record in enumerate(records, start=1):
        rewards = []
        for index, response in enumerate(record["responses"]):
            try:
                value = fn(response, record["target"])
            except Exception as err:
                logger.debug("reward %r on %s:%d", reward, source, number, exc_info=True)
                raise RewardError(
                    f"{source}:{number}: reward {reward!r} raised {type(err).__name__}: {err} on response {index} "
                    f"of {record['id']!r} (perpo -v shows the traceback)"
                ) from err
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RewardError(
                    f"{source}:{number}: reward {reward!r} gave {value!r} for response {index} of "
                    f"{record['id']!r}; a reward must return a finite number"
                )
            rewards.append(float(value))
        scored.append(rewards)
    return scored


def _histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    import numpy as np

    counts, _ = np.histogram(np.asarray(values, dtype=float), bins=np.asarray(edges, dtype=float))
    return [int(c) for c in counts]


def _edges(values: Sequence[float], bins: int) -> list[float]:
    low = min(0.0, min(values, default=0.0))
    high = max(1.0, max(values, default=1.0))
    return [low + (high - low) * i / bins for i in range(bins + 1)]


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    return {f"{q:g}": float(np.quantile(np.asarray(values, dtype=float), q)) for q in QUANTILES}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def best_of_n(rewards: Sequence[Sequence[float]], hit: float | None = None) -> dict[str, list]:
    """Best-of-k over the first k responses of each list (samples are i.i.d., so the first k are a k-sample run).

    Args:
        rewards: per list, the rewards in sampling order.
        hit: if given, also the fraction of lists whose best-of-k reaches it (IoU 0.5: best-of-k AP@50).

    Returns:
        {"k": [1, 2, 4, ..., N], "mean_best": [...], "hit_rate": [...] (when `hit` is given)}.
    """
    n = min((len(r) for r in rewards), default=0)
    ks = sorted({k for k in (2**i for i in range(n.bit_length())) if k <= n} | ({n} if n else set()))
    out: dict[str, list] = {"k": ks, "mean_best": [_mean([max(r[:k]) for r in rewards]) for k in ks]}
    if hit is not None:
        out["hit_rate"] = [_mean([float(max(r[:k]) >= hit) for r in rewards]) for k in ks]
    return out


def data_stats(
    records: Sequence[dict],
    rewards: Sequence[Sequence[float]],
    passing: Sequence[bool],
    kept: Sequence[bool],
    *,
    task: str,
    reward: str,
    margin: float,
    bins: int,
) -> dict[str, Any]:
    """The statistics summary of one build (see the module docstring for the keys)."""
    margins = [list_margin(r) for r in rewards]
    all_rewards = [v for r in rewards for v in r]
    kept_rewards = [v for r, k in zip(rewards, kept, strict=True) if k for v in r]
    failures = sum(is_parse_failure(task, resp) for record in records for resp in record["responses"])
    reward_edges, margin_edges = _edges(all_rewards, bins), _edges(margins, bins)
    datasets: dict[str, Counter] = {}
    for record, p, k in zip(records, passing, kept, strict=True):
        counter = datasets.setdefault(str((record.get("meta") or {}).get("dataset", "")), Counter())
        counter.update({"in": 1, "passing_margin": int(p), "kept": int(k)})
    return {
        "task": task,
        "reward_name": reward,
        "margin_threshold": margin,
        "lists": {
            "in": len(records),
            "passing_margin": sum(passing),
            "kept": sum(kept),
            "dropped_by_margin": len(records) - sum(passing),
            "dropped_by_target_count": sum(passing) - sum(kept),
        },
        "responses": {
            "total": len(all_rewards),
            "per_list_min": min((len(r) for r in rewards), default=0),
            "per_list_max": max((len(r) for r in rewards), default=0),
            "parse_failures": failures,
            "parse_fail_rate": failures / len(all_rewards) if all_rewards else None,
            "parse_failure_means": "no box parses" if task == "grounding" else "empty response",
        },
        "reward": {
            "mean": _mean(all_rewards),
            "mean_best": _mean([max(r) for r in rewards]),
            "mean_worst": _mean([min(r) for r in rewards]),
            "mean_kept": _mean(kept_rewards),
            "histogram": {
                "edges": reward_edges,
                "all": _histogram(all_rewards, reward_edges),
                "kept": _histogram(kept_rewards, reward_edges),
            },
        },
        "list_margin": {
            "mean": _mean(margins),
            "quantiles": _quantiles(margins),
            "pass_rate": sum(passing) / len(records) if records else None,
            "histogram": {"edges": margin_edges, "counts": _histogram(margins, margin_edges)},
        },
        "best_of_n": best_of_n(rewards, HIT_THRESHOLD if reward == "iou" else None),
        "by_dataset": {name: dict(sorted(c.items())) for name, c in sorted(datasets.items())},
    }


def stats_figure(stats: dict) -> bytes:
    """A PNG of the reward histogram (all vs kept lists), the margin histogram with the threshold, best-of-N."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    left, middle, right = figure.subplots(1, 3)
    hist = stats["reward"]["histogram"]
    widths = [b - a for a, b in zip(hist["edges"][:-1], hist["edges"][1:], strict=True)]
    left.bar(hist["edges"][:-1], hist["all"], width=widths, align="edge", alpha=0.5, label="all lists")
    left.bar(hist["edges"][:-1], hist["kept"], width=widths, align="edge", alpha=0.7, label="kept lists")
    left.set(title=f"rewards ({stats['reward_name']}) per response", xlabel="reward", ylabel="responses")
    left.legend()
    margin = stats["list_margin"]["histogram"]
    widths = [b - a for a, b in zip(margin["edges"][:-1], margin["edges"][1:], strict=True)]
    middle.bar(margin["edges"][:-1], margin["counts"], width=widths, align="edge", alpha=0.7)
    middle.axvline(stats["margin_threshold"], color="red", linestyle="--", label=f"m = {stats['margin_threshold']:g}")
    lists = stats["lists"]
    middle.set(
        title=f"list margin max-min: {lists['passing_margin']}/{lists['in']} pass", xlabel="margin", ylabel="lists"
    )
    middle.legend()
    bon = stats["best_of_n"]
    right.plot(bon["k"], bon["mean_best"], marker="o", label="mean best reward")
    if "hit_rate" in bon:
        right.plot(bon["k"], bon["hit_rate"], marker="s", label=f"best-of-k hit rate (>= {HIT_THRESHOLD})")
    right.set(title="best of the first k responses", xlabel="k", ylim=(0, 1.02))
    if bon["k"]:
        right.set_xscale("log", base=2)
        right.set_xticks(bon["k"], labels=[str(k) for k in bon["k"]])
    right.legend()
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.14, top=0.9, wspace=0.28)  # tight_layout costs 0.5 s
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _without_eval_images(
    records: list[dict], image_root: Path, cfg: BuildDataConfig, source: Path
) -> tuple[list[dict], dict | None]:
    """The records whose image is not an evaluation image of `--exclude_eval`, and what was found.

    Raises:
        ConfigError: some are (with `--eval_overlap refuse`), naming how many and the first few.
    """
    from perpo.data.overlap import eval_images, overlapping

    paths = [p.strip() for p in cfg.exclude_eval.split(",") if p.strip()]
    if not paths:
        return records, None
    hashes = eval_images(paths)
    found = overlapping([resolve_image(r, image_root) for r in records], hashes)
    summary = {"eval_sets": paths, "eval_images": len(hashes), "overlapping_lists": len(found)}
    summary["action"] = cfg.eval_overlap
    if found and cfg.eval_overlap == "refuse":
        shown = "; ".join(f"{records[i]['id']!r} is {name}" for i, name in found[:3])
        raise ConfigError(
            f"{source}: {len(found)} of {len(records)} instructions are on evaluation images ({shown}"
            f"{'; ...' if len(found) > 3 else ''}): make the instructions from images that are not evaluation "
            "images, or pass --eval_overlap drop to leave those lists out"
        )
    if found:
        logger.info("%s: left out %d lists on evaluation images (--exclude_eval)", source, len(found))
    dropped = {i for i, _ in found}
    return [r for i, r in enumerate(records) if i not in dropped], summary


def run_build_data(cfg: BuildDataConfig) -> dict[str, Any]:
    """Score, filter and write the listwise training data; returns the statistics (also in `stats.json`).

    Raises:
        RecordError: a bad samples line (names file, line and field), or mixed tasks.
        RewardError: the reward raised, or gave a value that is not a finite number (names file, line and id).
        ConfigError: an unknown reward, or a user reward without `--margin`.
        FileNotFoundError: the samples file, or the image of a kept list, is missing.
    """
    from perpo.io import atomic_open, save_resolved, write_json

    source = Path(cfg.samples)
    for name in OUTPUTS:  # written into --out beside whatever it holds, each replacing its own name only
        given = [source, *cfg.exclude_eval.split(",")]
        check_spares_inputs("--out", Path(cfg.out) / name, given)
    records = load_records(source, stage="samples", n=cfg.n or None)
    if not records:
        raise RecordError(f"{source}: no records to build from")
    task = records[0]["task"]
    for number, record in enumerate(records, start=1):
        if record["task"] != task:
            raise RecordError(
                f"{source}:{number}: field 'task' is {record['task']!r} but line 1 is {task!r}; build one task at a "
                "time (split the samples file by task)"
            )
    if cfg.n:
        records = [{**r, "responses": r["responses"][: cfg.n]} for r in records]
    image_root = Path(cfg.image_root) if cfg.image_root else source.parent
    records, overlap = _without_eval_images(records, image_root, cfg, source)
    reward = cfg.reward or TASK_REWARDS[task]
    try:
        get_reward(reward)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if cfg.margin is not None:
        margin = cfg.margin
    elif reward in DEFAULT_MARGINS:
        margin = DEFAULT_MARGINS[reward]
    else:
        raise ConfigError(f"reward {reward!r} has no default margin: pass --margin (e.g. --margin 0.5)")

    rewards = score_records(records, reward, str(source))
    passing = [passes_margin(r, margin) for r in rewards]
    candidates = [i for i, p in enumerate(passing) if p]
    if not candidates:
        widest = max(list_margin(r) for r in rewards)
        raise ConfigError(
            f"{source}: no list reaches margin {margin:g} (the widest spans {widest:.3f} in {reward} reward): "
            "lower --margin, or sample more (or more varied) responses"
        )
    if cfg.target_count:
        chosen = equal_share_sample([records[i] for i in candidates], cfg.target_count, cfg.seed)
        keep = {r["id"] for r in chosen}
        if cfg.target_count > len(candidates):
            logger.warning(
                "target count %d > %d lists passing the margin: keeping all", cfg.target_count, len(candidates)
            )
    else:
        keep = {records[i]["id"] for i in candidates}
    kept = [r["id"] in keep for r in records]

    out = Path(cfg.out)
    base = Path(os.path.abspath(out))
    train = []
    for number, (record, scores) in enumerate(zip(records, rewards, strict=True), start=1):
        if not kept[number - 1]:
            continue
        image = resolve_image(record, image_root)
        if cfg.check_images and image is not None and not image.is_file():
            raise FileNotFoundError(
                f"{source}:{number}: image {image} of {record['id']!r} not found (relative paths are read from "
                f"--image_root, here {image_root}; pass --check_images false to skip this check)"
            )
        train.append(rebase_image(record, image_root, base) | {"rewards": scores, "reward": reward})

    stats = data_stats(records, rewards, passing, kept, task=task, reward=reward, margin=margin, bins=cfg.bins)
    stats |= {"samples": str(source), "target_count": cfg.target_count, "seed": cfg.seed, "n": cfg.n or None}
    stats |= {"eval_overlap": overlap}
    png = stats_figure(stats)

    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "stats.png", "wb") as handle:
        handle.write(png)
    write_json(out / "stats.json", stats)
    save_resolved(out, "build_config", cfg)
    with atomic_open(out / "train.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(dump_record(r) for r in train)
    logger.info("%s: kept %d of %d lists -> %s", source, len(train), len(records), out / "train.jsonl")
    return stats
