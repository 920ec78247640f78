"""`perpo demo` / `make demo`: the whole PerPO loop on the embedded default, on a laptop CPU, in minutes.

    synthetic grounding data ─▶ warmed-up tiny LLaVA (base) ─▶ sample N = 20 at T = 0.5 ─▶ IoU rewards
    ─▶ margin filter ─▶ train SFT, DPO, LiPO-λ, PerPO from the same base with the same budget
    ─▶ evaluate all five with the lmms-eval tasks (AP@50 on the test split, best-of-N, blank image)
    ─▶ Table-1-style table, Figure 1b curve, Figure 1c bars, before/after gallery, index.md

Every stage writes into one output folder; the resolved configuration, seeds and run metadata are saved first.
The console shows the stages, one progress bar per stage and per trained method, and one summary line per trained
and per evaluated model; logging and warnings go to `<out>/logs/demo.log` (errors stay on the console), each
method's training log to `<out>/models/<method>/train_log.jsonl` (and TensorBoard, `<out>/models/<method>/runs`),
each lmms-eval run's output to `<out>/eval/<model>/lmms_eval.log` (linked from `<out>/logs/`).
Each stage is a public command of its own (`perpo data synth`, `perpo sample`, `perpo build-data`, `perpo train`,
`perpo eval`, `perpo report`), called here in-process, so the demo is also a worked example of the pipeline.

`perpo demo --track ocr` (`make demo-ocr`, `OCRDemoConfig`) runs the same stages on the OCR half of the paper:

    synthetic pages (`perpo data synth-ocr`) ─▶ tiny_llava_ocr (base) ─▶ sample N = 20 at T = 0.5
    ─▶ 1 − edit distance rewards ─▶ margin 0.04 ─▶ train SFT, DPO, PerPO ─▶ lmms-eval's perpo_fox_en_page on the
    test pages (official and corrected argument order, blank page, best-of-20) ─▶ Table-2-style table, figures,
    the before/after transcriptions with their differences marked
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from perpo.config import ConfigError, check_numbers, opt
from perpo.io import save_resolved
from perpo.objectives.losses import LOSSES, METHODS
from perpo.studies.stages import (
    base_on_val,
    build_lists,
    evaluate_models,
    prepare_base,
    resolve_threads,
    sample_lists,
    train_method,
)

logger = logging.getLogger(__name__)

ASSET = Path(__file__).parents[1] / "assets" / "tiny_llava_misaligned"  # docs/miniature.md says why this base
OCR_ASSET = Path(__file__).parents[1] / "assets" / "tiny_llava_ocr"
TRACKS = ("grounding", "ocr")


@dataclass
class DemoConfig:
    """Arguments of `perpo demo`. The defaults are the configuration whose results the README shows."""

    out: str = opt("runs/demo", help="output folder")
    track: str = opt(
        "grounding",
        help="grounding (boxes, IoU reward, the Table 1 twin) or ocr (synthetic pages, 1 - edit distance, the Table 2 "
        "twin; its own defaults apply: give it on the command line)",
    )
    seed: int = opt(0, help="seed of sampling, training and evaluation (repeat the demo with 1, 2 for spread)")
    data_seed: int = opt(
        1, help="seed of the synthetic data (1: scenes the base never saw; its warm-ups used seed 0's train scenes)"
    )
    quick: bool = opt(False, help="a minute-scale smoke run of every stage (tiny splits, few lists, one epoch)")
    base_model: str = opt(str(ASSET), help="warmed-up base model folder")
    warmup_steps: int = opt(0, ge=0, help="if > 0, warm up a fresh tiny LLaVA for this many steps instead")
    instructions: int = opt(1000, ge=1, help="train-split instructions to sample for")
    n: int = opt(20, ge=2, help="responses sampled per instruction (paper: 20)")
    temperature: float = opt(0.5, ge=0, help="sampling temperature (paper: 0.5)")
    margin: float = opt(0.8, ge=0, le=1, help="keep lists whose IoU margin max - min reaches this (paper: 0.8)")
    methods: list[str] = opt(
        [],
        help="training methods compared with the base (default: the track's methods in objectives.losses.METHODS)",
    )
    epochs: float = opt(3.0, gt=0, help="training epochs over the kept lists (the same budget for every method)")
    batch_size: int = opt(8, ge=1, help="lists per optimizer step")
    learning_rates: list[str] = opt(
        [],
        help="METHOD=RATE overrides, e.g. `--learning_rates perpo=2e-4 sft=1e-3` (default: each method's val pick "
        "for the track in perpo.objectives.losses.METHODS; iterative PerPO is perpo_iter, GRPO grpo)",
    )
    betas: list[str] = opt(
        [],
        help="METHOD=BETA overrides likewise (paper: 0.1 for every preference loss; grpo's β is its KL coefficient)",
    )
    gamma: float = opt(0.5, ge=0, help="γ of PerPO (paper: 0.5)")
    lora_r: int = opt(32, ge=1, help="LoRA rank (the tiny LM has width 192)")
    lora_alpha: int = opt(64, ge=1, help="LoRA alpha")
    heldout: int = opt(
        200,
        ge=0,
        help="after training, score greedy AP@50 on this many val expressions (held out) and on as many training "
        "lists' own instructions, so over-fitting shows in the summary (0: off)",
    )
    study: str = opt(
        "",
        help="online: after the demo, train iterative PerPO (perpo iterate) and GRPO (perpo grpo) on the same "
        "instructions with the same budget, evaluate them alike and print the comparison (grounding only)",
    )
    study_only: bool = opt(False, help="with --study online: only the study, beside the finished demo in --out")
    rounds: int = opt(2, ge=1, help="--study online: rounds of iterative PerPO")
    iter_reference: str = opt(
        "base", help="--study online: reference of iterative PerPO, base or previous (each round's starting policy)"
    )
    threads: int = opt(
        0,
        ge=0,
        help="torch CPU threads of the stages that run alone (sampling, training); the evaluation runs two "
        "lmms-eval processes side by side with half as many each. 0: OMP_NUM_THREADS when set, else every core "
        "this process may use",
    )

    def __post_init__(self):
        check_numbers(self)
        if self.track not in TRACKS:
            raise ConfigError(f"track must be one of {', '.join(TRACKS)}, got {self.track!r}")
        if self.track == "ocr" and not isinstance(self, OCRDemoConfig):
            raise ConfigError("track ocr has its own defaults: pass `--track ocr` on the command line")
        self.methods = self.methods or [name for name in LOSSES if self.track in METHODS[name].settings]
        unknown = [m for m in self.methods if m not in LOSSES]
        if unknown:
            raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(LOSSES)}")
        self._lr = _overrides("learning_rates", self.learning_rates, low=0.0, strict=True)
        self._beta = _overrides("betas", self.betas, low=0.0, strict=False)
        if self.study not in ("", "online"):
            raise ConfigError(f"study must be online (or empty), got {self.study!r}")
        if self.study and self.track != "grounding":
            raise ConfigError("--study online runs on the grounding track only")
        if self.iter_reference not in ("base", "previous"):
            raise ConfigError(f"iter_reference must be base or previous, got {self.iter_reference!r}")
        if self.study_only and not self.study:
            raise ConfigError("--study_only needs --study online")
        if self.quick:
            self.instructions, self.n, self.epochs = min(self.instructions, 24), min(self.n, 6), 1.0

    def lr(self, method: str) -> float:
        """The learning rate of a method: `--learning_rates`, else the registry's for the track."""
        return self._lr.get(method, METHODS[method].setting(self.track)[0])

    def beta(self, method: str) -> float:
        """β of a method likewise (SFT has none: it records the registry's and ignores it)."""
        return self._beta.get(method, METHODS[method].setting(self.track)[1])


def _overrides(option: str, values: list[str], low: float, strict: bool) -> dict[str, float]:
    """`METHOD=VALUE` items as {method: value}, each method known and each value finite and above `low`
    (`strict`) or at least `low`.

    Raises:
        ConfigError: naming the option, the item and what is wrong.
    """
    parsed = {}
    for item in values:
        name, _, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if name not in METHODS or name == "base":
            raise ConfigError(f"--{option} {item!r}: unknown method {name!r}; choose from {', '.join(METHODS)}")
        if not math.isfinite(value) or value < low or (strict and value == low):
            bound = f"> {low:g}" if strict else f">= {low:g}"
            raise ConfigError(f"--{option} {item!r}: the value must be a finite number {bound} (METHOD=VALUE)")
        parsed[name] = value
    return parsed


@dataclass
class OCRDemoConfig(DemoConfig):
    """Arguments of `perpo demo --track ocr`: the fields of `DemoConfig`, with the OCR track's defaults."""

    out: str = opt("runs/demo_ocr", help="output folder")
    track: str = opt("ocr", help="ocr (this configuration); grounding has its own defaults (`perpo demo`)")
    data_seed: int = opt(
        1, help="seed of the synthetic pages (1: pages the base never saw; it was warmed up on seed 0)"
    )
    base_model: str = opt(str(OCR_ASSET), help="warmed-up base model folder (reads synthetic pages)")
    warmup_steps: int = opt(
        0, ge=0, help="if > 0, warm up a fresh tiny LLaVA on the pages for this many steps instead"
    )
    margin: float = opt(0.04, ge=0, le=1, help="keep lists whose reward margin max - min reaches this (paper: 0.04)")
    heldout: int = opt(
        0,
        ge=0,
        help="held-out scoring during training is for grounding; the OCR track scores val "
        "once before training and test through lmms-eval",
    )


class Stages:
    """Says which stage runs, the time so far and, from the expected stage times, about how long is left."""

    def __init__(self, expected: dict[str, float]):
        self.expected = expected
        self.names = list(expected)
        self.began = time.perf_counter()

    def start(self, name: str) -> None:
        index = self.names.index(name)
        elapsed = time.perf_counter() - self.began
        left = sum(self.expected[n] for n in self.names[index:])
        print(
            f"\n[{index + 1}/{len(self.names)}] {name}  "
            f"(elapsed {elapsed / 60:.1f} min, about {left / 60:.0f} min left)",
            flush=True,
        )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.began


def _expected_seconds(cfg: DemoConfig) -> dict[str, float]:
    """Stage times measured on a 2-core CPU, scaled to this configuration (used only for the 'left' estimate)."""
    scale = cfg.instructions * cfg.n / 6000
    methods = len(cfg.methods)
    if cfg.track == "ocr":
        return {
            "synthetic data and base model": 10,
            "sample": 38 * scale,
            "rewards and margin filter": 2,
            "train": 40 * methods * scale * cfg.epochs / 3,
            "evaluate (lmms-eval)": 40 * (methods + 1),
            "report": 2,
        }
    stages = {
        "synthetic data and base model": 15,
        "sample": 13 * scale,
        "rewards and margin filter": 2,
        "train": 18.5 * methods * scale * cfg.epochs / 3,
        "evaluate (lmms-eval)": 36 * (methods + 1),
        "report": 2,
    }
    if cfg.study == "online":  # two online trainings (sampling inside) and their evaluation
        stages["online study: iterative PerPO and GRPO"] = 360 * scale + 100
    return stages


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; return the summary (also written to `<out>/summary.json`).

    Logging and warnings go to `<out>/logs/demo.log` meanwhile (errors and perpo's warnings stay on the console).
    """
    from perpo.console import quiet_console

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_console(out / "logs"):
        return _run_demo(cfg, out)


def _run_demo(cfg: DemoConfig, out: Path) -> dict:
    import torch

    from perpo.console import training_summary
    from perpo.io import read_jsonl, write_json

    threads = resolve_threads(cfg.threads)
    torch.set_num_threads(threads)
    if cfg.study_only:
        from perpo.studies.online_study import run_online_study

        return {"online": run_online_study(cfg, out, threads)}
    logger.info("torch threads: %d for sampling and training, %d per evaluation process", threads, threads // 2 or 1)
    save_resolved(out, "demo_config", cfg)
    stages = Stages(_expected_seconds(cfg))
    timings: dict[str, float] = {}

    def stage(name: str, fn, *args):
        stages.start(name)
        began = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - began, 1)
        return result

    def base_stage() -> tuple[Path, Path, dict]:
        data, base = prepare_base(cfg, out)
        return data, base, base_on_val(data, base, cfg.track)

    data, base, base_val = stage("synthetic data and base model", base_stage)
    lists = out / "lists"
    stage("sample", sample_lists, cfg, data, base, lists)
    stats = stage("rewards and margin filter", build_lists, cfg, lists)

    def train_all() -> dict[str, Path]:
        adapters = {}
        for method in cfg.methods:
            adapters[method] = train_method(cfg, method, base, lists, out / "models" / method)
            history = read_jsonl(adapters[method] / "train_log.jsonl")
            print("  " + training_summary(method, history, lists=stats["lists"]["kept"]), flush=True)
        return adapters

    adapters = stage("train", train_all)
    evals = stage("evaluate (lmms-eval)", evaluate_models, cfg, data, base, adapters, out / "eval", threads)
    report_dir = stage("report", write_demo_report, out, data, evals, cfg.track)
    summary = {
        "config": asdict(cfg),
        "base_val": base_val,
        "lists": stats["lists"],
        "list_margin_mean": stats["list_margin"]["mean"],
        "results": {name: str(path) for name, path in evals.items()},
        "report": str(report_dir),
        "timings_s": timings,
        "threads": {"train": threads, "eval_processes": 2, "eval_threads_each": max(1, threads // 2)},
        "seconds": round(stages.seconds, 1),
    }
    write_json(out / "summary.json", summary)
    table = report_dir / "tables" / f"{REPORT_TABLE[cfg.track]}.md"
    if table.is_file():
        print("\n" + table.read_text())
    if cfg.study == "online":
        from perpo.studies.online_study import run_online_study

        stages.start("online study: iterative PerPO and GRPO")
        summary["online"] = run_online_study(cfg, out, threads)
        summary["seconds"] = round(stages.seconds, 1)
        write_json(out / "summary.json", summary)
    print(f"demo done in {summary['seconds'] / 60:.1f} min; open {report_dir / 'index.md'} (logs in {out / 'logs'})")
    return summary


def row_label(method: str) -> str:
    """Row label of a method's run: "base", "+ SFT", "+ PerPO", ... (as the report tables label rows)."""
    label = METHODS[method].label if method in METHODS else method
    return label if method == "base" else f"+ {label}"


REPORT_TABLE = {"grounding": "synth", "ocr": "synth_ocr"}
"""The table spec (reports/tables.yaml) of each track's report: the Table 1 twin, the Table 2 twin."""


def write_demo_report(out: Path, data: Path, evals: dict[str, Path], track: str = "grounding") -> Path:
    """Stage 6: the Table-1-style table (ocr: Table-2-style), Figures 1b and 1c, the base-vs-PerPO gallery (ocr: the
    transcriptions with their differences marked), all in `<out>/report`."""
    from reports.report import ReportConfig, run_report

    runs = [{"path": str(path), "label": row_label(name), "method": name} for name, path in evals.items()]
    compare = {"base": row_label("base"), "after": row_label("perpo")} if "perpo" in evals else None
    benchmark = "synthetic page-OCR" if track == "ocr" else "synthetic grounding"
    index = run_report(
        ReportConfig(
            out=str(out / "report"),
            runs=runs,
            title=f"PerPO in miniature: the tiny LLaVA on the {benchmark} benchmark",
            tables=[REPORT_TABLE[track]],
            paper_tables=False,
            figures=["best_of_n", "image_ablation"],
            compare=compare,
            image_roots=[str(data / "test" / "en_pdf_png")] if track == "ocr" else [str(data)],
        )
    )
    return index.parent
