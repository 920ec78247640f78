"""The `perpo` command line: one subcommand per job, each with its own `--help`.

Every subcommand parses its own arguments (config-driven ones through `HfArgumentParser`, so
`perpo <command> CONFIG.yaml --flag value` works), and imports heavy libraries only when it runs, so
`perpo --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from perpo.config import int_at_least


@dataclass(frozen=True)
class Command:
    summary: str
    run: Callable[[list[str]], int]


def _setup(argv: list[str]) -> int:
    argparse.ArgumentParser(
        prog="perpo setup",
        description="Install WordNet 3.0 for nltk's METEOR into this environment: from Debian's wordnet packages "
        "when apt-get is present (no root, no internet beyond the package mirror), else with nltk.download. "
        "`make` runs it once when it creates the environment.",
    ).parse_args(argv)
    from perpo.setup_env import check_wordnet, ensure_wordnet

    print(f"WordNet ready: {ensure_wordnet()}")
    print(check_wordnet())
    return 0


def _tiny_model(argv: list[str]) -> int:
    from perpo.embedded.tiny import TinySpec

    defaults = TinySpec()
    parser = argparse.ArgumentParser(
        prog="perpo tiny-model",
        description="Build the tiny LLaVA from config (CLIP-style tower + Llama-style LM + local tokenizer and "
        "processor) with random weights and save it with save_pretrained. Nothing is downloaded.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    for name, value in vars(defaults).items():
        low = {"seed": None, "vocab_size": 0}.get(name, 1)
        kind = int_at_least(low) if low is not None else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value, help=f"(default {value})")
    args = parser.parse_args(argv)
    from perpo.embedded.tiny import save_tiny_model

    spec = TinySpec(**{k: getattr(args, k) for k in vars(defaults)})
    out = save_tiny_model(args.out, spec)
    print(f"tiny LLaVA written to {out} ({spec.image_tokens} image tokens per image)")
    return 0


def _add_render_arguments(parser, what: str, counts: dict[str, int], smallest: int) -> None:
    """--out, --seed, one count per split and --size of a synthetic benchmark renderer."""
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    for split, count in counts.items():
        parser.add_argument(
            f"--{split}", type=int_at_least(0), default=count, help=f"{split} {what} (default {count})"
        )
    parser.add_argument("--size", type=int_at_least(smallest), default=64, help="side in pixels (default 64)")


def _add_synth_parser(sub) -> None:
    synth = sub.add_parser(
        "synth",
        help="render the synthetic grounding benchmark (refer layout + flat JSONL)",
        description="Render scenes of coloured shapes with referring expressions and exact boxes for the "
        "train/val/test splits, written both in the RefCOCO refer layout and as flat JSONL. Deterministic: the "
        "same seed gives byte-identical files.",
    )
    _add_render_arguments(synth, "scenes", {"train": 4000, "val": 300, "test": 300}, smallest=32)
    synth.set_defaults(handler=_synth_data)


def _synth_data(args, parser) -> int:
    from perpo.embedded.synth import SynthSpec, build_synth

    counts = {"train": args.train, "val": args.val, "test": args.test}
    spec = SynthSpec(width=args.size, height=args.size, counts=counts)
    out = build_synth(args.out, seed=args.seed, spec=spec)
    manifest = json.loads((out / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        print(f"{split:>5}: {info['scenes']} scenes, {info['expressions']} expressions -> {out / info['jsonl']}")
    return 0


def _add_synth_ocr_parser(sub) -> None:
    pages = sub.add_parser(
        "synth-ocr",
        help="render the synthetic page-OCR benchmark (Fox layout, one folder per split)",
        description="Render small pages of a few lines of words in PIL's bitmap font for the train/val/test "
        "splits, in the Fox benchmark's layout (<split>/en_page_ocr.json + <split>/en_pdf_png/), so that "
        "`perpo data instructions --source fox` and the perpo_fox_* tasks (PERPO_FOX_DIR=<out>/<split>) read "
        "them unchanged. Deterministic: the same seed gives byte-identical files.",
    )
    _add_render_arguments(pages, "pages", {"train": 2000, "val": 200, "test": 200}, smallest=40)
    pages.add_argument(
        "--max_lines", type=int_at_least(1), default=4, help="most lines on a page (default 4; at least 2 drawn)"
    )
    pages.set_defaults(handler=_synth_ocr_data)


def _synth_ocr_data(args, parser) -> int:
    from perpo.embedded.synth_ocr import OCRSpec, build_synth_ocr

    counts = {"train": args.train, "val": args.val, "test": args.test}
    try:
        spec = OCRSpec(
            width=args.size, height=args.size, min_lines=min(2, args.max_lines), max_lines=args.max_lines,
            counts=counts,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    out = build_synth_ocr(args.out, seed=args.seed, spec=spec)
    manifest = json.loads((out / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        print(f"{split:>5}: {info['pages']} pages -> {out / info['json']}  (PERPO_FOX_DIR={out / split})")
    return 0


def _add_refcoco_parser(sub) -> None:
    refcoco = sub.add_parser(
        "refcoco",
        help="the standard RefCOCO/RefCOCO+/RefCOCOg evaluation splits as flat JSONL (for PERPO_REFCOCO_DIR)",
        description="Read the refer annotations (<refer_root>/<dataset>/instances.json + refs(<split_by>).p) with "
        "pycocotools and write the standard evaluation splits (RefCOCO/RefCOCO+ unc val/testA/testB, RefCOCOg umd "
        "val/test) as one JSONL row per referring expression, a link to the COCO images and a manifest. Point "
        "PERPO_REFCOCO_DIR at the output folder to run the perpo_refcoco* lmms-eval tasks.",
    )
    refcoco.add_argument("--refer_root", required=True, type=Path, help="folder with refcoco/, refcoco+/, refcocog/")
    refcoco.add_argument("--coco_images", required=True, type=Path, help="COCO train2014 image folder")
    refcoco.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    refcoco.add_argument(
        "--datasets", default="refcoco,refcoco+,refcocog", help="comma-separated (default refcoco,refcoco+,refcocog)"
    )
    refcoco.set_defaults(handler=_refcoco_data)


def _refcoco_data(args, parser) -> int:
    from perpo.config import ConfigError, check_spares_inputs
    from perpo.data.refcoco import build_refcoco

    names = [name for name in args.datasets.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--datasets names no dataset ({args.datasets!r}): e.g. refcoco,refcoco+,refcocog")
    check_spares_inputs("--out", args.out, [args.refer_root, args.coco_images])
    try:
        out = build_refcoco(args.refer_root, args.coco_images, args.out, names)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    manifest = json.loads((out / "manifest.json").read_text())
    for info in manifest["datasets"].values():
        for split, counts in info["splits"].items():
            print(f"{info['name']:>8} {split:>5}: {counts['expressions']} expressions -> {out / counts['jsonl']}")
    print(f"export PERPO_REFCOCO_DIR={out.resolve()}")
    return 0


def _warmup(argv: list[str]) -> int:
    from perpo.config import parse_command
    from perpo.embedded.warmup import WarmupConfig, run_warmup

    (cfg,) = parse_command(
        [WarmupConfig],
        argv,
        prog="perpo warmup",
        description="Supervised warm-up of the tiny LLaVA on a synthetic train split, until it is 'moderately "
        "capable' (answers in the task's format, a fair share right) like the paper's base models: boxes on "
        "`perpo data synth` scenes (--task grounding) or page text on `perpo data synth-ocr` pages (--task ocr). "
        "Resumable: rerun the same command after an interruption.",
    )
    log = run_warmup(cfg)
    last = log["evals"][-1] if log["evals"] else {}
    score = (
        f"edit distance {last.get('edit_dist', float('nan')):.3f}"
        if cfg.task == "ocr"
        else (f"AP@50 {last.get('ap50', float('nan')):.3f}")
    )
    print(f"warm-up done in {log['seconds'] / 60:.1f} min; val {score} -> {cfg.out}")
    return 0


def _demo(argv: list[str]) -> int:
    from perpo.config import parse_command
    from perpo.studies.demo import DemoConfig, OCRDemoConfig, run_demo

    ocr = "--track=ocr" in argv or any(a == "--track" and b == "ocr" for a, b in zip(argv, argv[1:], strict=False))
    (cfg,) = parse_command(
        [OCRDemoConfig if ocr else DemoConfig],
        argv,
        prog="perpo demo",
        description=(
            "The whole PerPO loop on the embedded default, on CPU in about 10 minutes: synthetic data, the "
            "warmed-up tiny LLaVA, N = 20 samples, IoU rewards and margin filter, SFT / DPO / LiPO-λ / PerPO "
            "training, lmms-eval evaluation, and a report folder with the table, figures and a before/after "
            "gallery. `--track ocr` runs the OCR half instead (synthetic pages, 1 - edit distance rewards, "
            "margin 0.04, SFT / DPO / PerPO, the Fox metrics in both argument orders: the Table 2 twin); "
            "`perpo demo --track ocr --help` lists its defaults."
        ),
    )
    run_demo(cfg)
    return 0


def _add_preference_data_parsers(sub) -> None:
    """`perpo data instructions` and `perpo data import-perpo` (preference-data sources, perpo.data.sources)."""
    inst = sub.add_parser(
        "instructions",
        help="write an instruction JSONL for `perpo sample` from synth, RefCOCO-family or Fox-style data",
        description="Turn a data source into instruction records (perpo/data/schema.py): grounding from the "
        "synthetic benchmark (--data) or the refer layout of RefCOCO/RefCOCO+/RefCOCOg (--refer_root, "
        "--coco_images), page OCR from a Fox-style JSON + image folder (--fox_json, --fox_images). With --total, "
        "a seeded subsample with an equal share per dataset (the paper samples RefCOCO/+/g equally). Image paths "
        "under the output's folder are stored relative to it, others absolute.",
    )
    inst.add_argument("--source", dest="input", required=True, choices=("synth", "refcoco", "fox"), help="data source")
    inst.add_argument("--out", required=True, type=Path, help="output instruction JSONL (written atomically)")
    inst.add_argument(
        "--model",
        help="the checkpoint the data is for (local folder or hub id): its family's question and answer format. "
        "Qwen2.5-VL answers JSON bbox_2d in pixels of the image its processor makes, so the records carry that "
        "size (`pixels`) and the boxes in it. Default: LLaVA-1.5's question and normalised boxes",
    )
    inst.add_argument(
        "--frame",
        choices=("padded", "original"),
        help="box frame (default: the family's: padded for LLaVA, original for Qwen2.5-VL)",
    )
    inst.add_argument("--split", default="train", help="split to read (default train)")
    inst.add_argument(
        "--total", type=int_at_least(0), default=0, help="seeded equal-share subsample of this size (0 = all)"
    )
    inst.add_argument("--seed", type=int, default=0, help="subsample seed (default 0)")
    inst.add_argument("--data", type=Path, help="synth: the benchmark folder from `perpo data synth`")
    inst.add_argument("--refer_root", type=Path, help="refcoco: folder with refcoco/, refcoco+/, refcocog/")
    inst.add_argument("--coco_images", type=Path, help="refcoco: COCO train2014 image folder")
    inst.add_argument(
        "--datasets", default="refcoco,refcoco+,refcocog", help="refcoco: comma-separated dataset folders"
    )
    inst.add_argument("--fox_json", type=Path, help="fox: the page list, e.g. en_page_ocr.json")
    inst.add_argument("--fox_images", type=Path, help="fox: the page image folder, e.g. en_pdf_png/")
    imp = sub.add_parser(
        "import-perpo",
        help="convert the authors' released PerPO data.json (answers_gen, iou_scores) into train.jsonl records",
        description="Import the released listwise data.json of the PerPO authors: one train record per entry with "
        "responses = answers_gen and rewards = iou_scores (reward iou). The released answers are rounded to 2 "
        "decimals: with --refer_root the exact ground-truth box is recovered from RefCOCO/+/g train by image and "
        "expression; otherwise the parsed answer is the target and meta.target_source says so.",
    )
    imp.add_argument("data_json", type=Path, help="the released data.json")
    imp.add_argument("--out", required=True, type=Path, help="output train JSONL (written atomically)")
    imp.add_argument("--frame", default="padded", choices=("padded", "original"), help="box frame (default padded)")
    imp.add_argument("--image_folder", type=Path, help="folder image_path is relative to (default: keep as released)")
    imp.add_argument("--refer_root", type=Path, help="refer data root, to recover exact (unrounded) targets")
    imp.add_argument("--datasets", default="refcoco,refcoco+,refcocog", help="datasets searched with --refer_root")
    inst.set_defaults(handler=_preference_data)
    imp.set_defaults(handler=_preference_data)


def _preference_data(args, parser) -> int:
    from perpo.config import ConfigError, check_spares_inputs
    from perpo.data import sources
    from perpo.model.families import LLAVA

    given = ("data_json", "image_folder", "refer_root", "coco_images", "data", "fox_json", "fox_images", "model")
    read = [getattr(args, k, None) for k in given]
    for folder in (getattr(args, "refer_root", None), getattr(args, "data", None)):  # the files read inside them
        if folder is not None and Path(folder).is_dir():
            read += [*Path(folder).glob("*/instances.json"), *Path(folder).glob("*/refs(*).p")]
            read += Path(folder).glob("synth_*.jsonl")
    check_spares_inputs("--out", args.out, read)
    if args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder; give the JSONL file to write, e.g. {args.out / 'x.jsonl'}")
    if args.source == "import-perpo":
        rows = None
        if args.refer_root:
            rows = sources.released_refer_rows(args.refer_root, [d for d in args.datasets.split(",") if d])
        records = sources.import_perpo_data(
            args.data_json, frame=args.frame, image_folder=args.image_folder, refer_rows=rows
        )
        sources.write_records(args.out, records, stage="train")
        exact = sum(r["meta"]["target_source"] == "refer" for r in records)
        print(f"{len(records)} lists ({exact} with exact targets from refer) -> {args.out}")
        return 0
    needs = {"synth": ("data",), "refcoco": ("refer_root", "coco_images"), "fox": ("fox_json", "fox_images")}
    missing = [f"--{name}" for name in needs[args.input] if getattr(args, name) is None]
    if missing:
        parser.error(f"--source {args.input} needs {' and '.join(missing)}")
    family, processor = LLAVA, None
    if args.model and args.input != "fox":  # page OCR has one question and no boxes, whatever the model
        from perpo.model.modeling import checkpoint_family, load_processor

        family = checkpoint_family(args.model)
        processor = load_processor(args.model) if family.pixel_boxes else None
    frame = args.frame or family.default_frame
    if family.pixel_boxes and frame != "original":
        parser.error(
            f"--model is a {family.model_type} checkpoint, which answers in its resized image: --frame original"
        )
    answers = {"frame": frame, "family": family, "processor": processor}
    if args.input == "synth":
        records = sources.synth_instructions(args.data, args.split, **answers)
    elif args.input == "refcoco":
        datasets = [d for d in args.datasets.split(",") if d]
        records = sources.refer_instructions(
            args.refer_root, args.coco_images, datasets=datasets, split=args.split, **answers
        )
    else:
        records = sources.fox_instructions(args.fox_json, args.fox_images)
    if args.total:
        records = sources.equal_share_sample(records, args.total, args.seed)
    sources.write_records(args.out, records)
    datasets = sorted({str(r.get("meta", {}).get("dataset", "")) for r in records})
    counts = ", ".join(f"{d}: {sum(r.get('meta', {}).get('dataset') == d for r in records)}" for d in datasets)
    print(f"{len(records)} instructions ({counts}) -> {args.out}")
    return 0


DATA_PARSERS = (_add_synth_parser, _add_synth_ocr_parser, _add_refcoco_parser, _add_preference_data_parsers)


def _data(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="perpo data", description="Build datasets (one subcommand per source).")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for add_parser in DATA_PARSERS:
        add_parser(sub)
    args = parser.parse_args(argv)
    return args.handler(args, parser)


def _sample(argv: list[str]) -> int:
    from perpo.config import parse_command
    from perpo.sampling.sample import SampleConfig, run_sample

    (cfg,) = parse_command(
        [SampleConfig],
        argv,
        prog="perpo sample",
        description="Sample N responses per instruction with a LLaVA-family model (optional LoRA adapter), in "
        "batches, seeded per instruction: the same seed gives the same samples whatever the batch size or restart "
        "point. The output JSONL is append-only; killed at any moment, the same command resumes where it stopped "
        "and the finished file equals an uninterrupted run's. Outputs made with other settings are refused. "
        "Data-parallel: --processes K on one machine, or under torchrun / accelerate launch (put `--` before "
        "`sample`: torchrun -m perpo.cli -- sample ...); each rank samples a shard and the shards merge into --out, "
        "byte-identical to one process (docs/scale.md).",
    )
    summary = run_sample(cfg)
    if cfg.dry_run:
        print(summary["estimate"]["line"])
        return 0
    shard = f" in shard {summary['rank'] + 1} of {summary['shards']}" if "rank" in summary else ""
    merged = f"; {summary['merged']} merged in from shard files" if summary.get("merged") else ""
    print(
        f"sampled {summary['sampled']} instructions{shard} ({summary['resumed']} already done, {summary['total']} in "
        f"all) x {cfg.n} responses in {summary['seconds']:.1f} s{merged} -> {summary['out']}"
    )
    return 0


def _build_data(argv: list[str]) -> int:
    from perpo.config import parse_command
    from perpo.data.build import BuildDataConfig, run_build_data

    (cfg,) = parse_command(
        [BuildDataConfig],
        argv,
        prog="perpo build-data",
        description="Score every sampled response with the task's discriminative reward (IoU in the record's frame "
        "for grounding, 1 - edit distance for OCR, or a dotted-path reward), keep the lists whose margin max - min "
        "reaches m (0.8 grounding, 0.04 OCR by default), optionally cut to a target count with an equal share per "
        "dataset, and write train.jsonl, stats.json and stats.png to the output folder.",
    )
    stats = run_build_data(cfg)
    lists, margin, bon = stats["lists"], stats["list_margin"], stats["best_of_n"]
    print(
        f"kept {lists['kept']} of {lists['in']} lists ({lists['passing_margin']} pass margin "
        f"{stats['margin_threshold']:g}); mean list margin {margin['mean']:.3f}; "
        f"parse failures {100 * (stats['responses']['parse_fail_rate'] or 0):.1f}%"
    )
    best = ", ".join(f"{k}: {v:.3f}" for k, v in zip(bon["k"], bon["mean_best"], strict=True))
    print(f"best-of-k mean reward ({stats['reward_name']}): {best}")
    print(f"-> {Path(cfg.out) / 'train.jsonl'}, stats.json, stats.png")
    return 0


def _train(argv: list[str]) -> int:
    import torch
    from transformers import TrainingArguments

    from perpo.config import parse_command
    from perpo.objectives.losses import LOSSES
    from perpo.training.trainer import PerPOArguments, deepspeed_distributed_env, run_train

    args, training_args = parse_command(
        [PerPOArguments, TrainingArguments],
        argv,
        prog="perpo train",
        description="Train a LLaVA-family model on listwise data with PerPO or a baseline (--loss "
        f"{'|'.join(LOSSES)}; perpo.objectives.losses.METHODS): peft LoRA, the reference kept fixed (--reference "
        "adapter|copy|precomputed), "
        "optional DeepSpeed (--deepspeed perpo/configs/deepspeed/zero3.json). Every transformers "
        "TrainingArguments flag works too (--learning_rate, --per_device_train_batch_size, --resume_from_checkpoint, "
        "--report_to tensorboard, ...). Recipes: perpo/configs/*.yaml.",
    )
    if training_args.deepspeed:
        deepspeed_distributed_env(on_cpu=training_args.use_cpu or not torch.cuda.is_available())
    out = run_train(args, training_args)
    print(f"trained adapters and processor written to {out}")
    return 0


def _grpo(argv: list[str]) -> int:
    from perpo.config import ConfigError

    try:
        from trl import GRPOConfig
    except ImportError as err:
        raise ConfigError(f"perpo grpo needs TRL, which is not installed ({err}): pip install 'perpo[grpo]'") from err

    import torch

    from perpo.config import parse_command
    from perpo.training.grpo import GRPOArguments, run_grpo

    if not torch.cuda.is_available() and not any(a.startswith("--use_cpu") for a in argv):
        argv = [*argv, "--use_cpu", "true"]  # as `perpo train` runs on a CPU without being told
    # GRPOConfig's own default (gradient_checkpointing=True) trips transformers' rename warning on every run
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    args, config = parse_command(
        [GRPOArguments, GRPOConfig],
        argv,
        prog="perpo grpo",
        description="Online RL beside PerPO: TRL's GRPOTrainer on perpo's rewards (IoU for grounding, 1 - edit "
        "distance for OCR), sampling --num_generations responses per instruction (PerPO's N) from the current "
        "policy at every step, LoRA and the trained projector as in `perpo train`. Reads the instruction file "
        "`perpo sample` reads; writes the adapter layout `perpo train` writes, so `perpo eval` takes it as is. Every "
        "trl.GRPOConfig flag works (--beta, --temperature, --max_completion_length, --learning_rate, ...).",
    )
    out = run_grpo(args, config)
    print(f"trained adapters and processor written to {out}")
    return 0


def _iterate(argv: list[str]) -> int:
    from perpo.config import parse_command
    from perpo.training.iterative import IterateConfig, run_iterate

    (cfg,) = parse_command(
        [IterateConfig],
        argv,
        prog="perpo iterate",
        description="Iterative (on-policy) PerPO: the instructions split into --rounds shares; each round samples "
        "its share from the current policy, builds the margin-filtered lists and trains the previous round's "
        "adapter further (`perpo train --init_adapter`). The reference is the base model (default) or the round's "
        "starting policy (--reference previous). Rerun the same command to resume. out/adapter is the final policy.",
    )
    summary = run_iterate(cfg)
    kept = ", ".join(str(r["lists_kept"]) for r in summary["rounds"])
    print(f"{len(summary['rounds'])} rounds (lists kept: {kept}) -> {summary['adapter']}")
    return 0


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="perpo export",
        description="Write a standalone Hugging Face checkpoint from a training output: the base model with the "
        "LoRA adapter (and trained projector) merged in, plus the processor. Any lmms-eval model wrapper "
        "(llava_hf, perpo_llava) loads the result with plain from_pretrained.",
    )
    parser.add_argument("adapter", type=Path, help="training output folder (adapter_config.json inside)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    parser.add_argument("--base", default=None, help="base model (default: the one recorded in the adapter)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="saved dtype (default auto: the base checkpoint's own, as its config.json records it)",
    )
    args = parser.parse_args(argv)
    from perpo.config import check_spares_inputs
    from perpo.model.modeling import export_merged

    check_spares_inputs("--out", args.out, [args.adapter, args.base])
    out = export_merged(args.adapter, args.out, base=args.base, dtype=args.dtype)
    print(f"merged checkpoint written to {out}")
    return 0


def _eval(argv: list[str]) -> int:
    from perpo.config import parse_command
    from perpo.evaluation import EvalConfig, run_eval

    (cfg,) = parse_command(
        [EvalConfig],
        argv,
        prog="perpo eval",
        description="Run lmms-eval on the perpo_* tasks (grounding, page OCR, best-of-N, no-image) as an "
        "eval_configs/ YAML describes (model, adapter, tasks, samples, seed, data folders, output folder), then "
        "collect results.json, samples/<task>.jsonl and the resolved config into the output folder. Flags override "
        "the YAML.",
    )
    run = run_eval(cfg)
    if cfg.dry_run:
        print(
            run["plan"]["line"] if run["plan"] else f"{cfg.model} is not a local checkpoint folder: nothing to check"
        )
        return 0
    for task, metrics in run["summary"].items():
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        print(f"{task}: {shown}")
    print(f"results: {run['results']}")
    print(f"samples: {run['output_dir'] / 'samples'} ({len(run['samples'])} tasks)")
    return 0


def _report(argv: list[str]) -> int:
    from reports.cli import report_command

    return report_command(argv, prog="perpo report")


def _compare(argv: list[str]) -> int:
    from reports.cli import compare_command

    return compare_command(argv, prog="perpo compare")


COMMANDS: dict[str, Command] = {
    "setup": Command("install the WordNet data METEOR needs (offline on Debian) and check it loads", _setup),
    "tiny-model": Command("build the tiny LLaVA from config and save it (model + processor)", _tiny_model),
    "data": Command("build datasets: `perpo data SOURCE` (`perpo data --help` lists the sources)", _data),
    "sample": Command("sample N responses per instruction (resumable, seeded per instruction)", _sample),
    "build-data": Command("score responses, margin-filter the lists, write train.jsonl + stats", _build_data),
    "warmup": Command("supervised warm-up of the tiny LLaVA on synthetic boxes or pages", _warmup),
    "train": Command("train with PerPO / LiPO / listwise / DPO / SFT (LoRA, DeepSpeed ZeRO-3)", _train),
    "iterate": Command("iterative (on-policy) PerPO: rounds of sample, build-data, train", _iterate),
    "grpo": Command("online RL (TRL's GRPO) on the same rewards and LoRA, for the comparison with PerPO", _grpo),
    "export": Command("merge a trained LoRA adapter into its base model as a standalone checkpoint", _export),
    "demo": Command("run the embedded default end to end (what `make demo` runs)", _demo),
    "eval": Command("run lmms-eval on the perpo_* tasks from an eval_configs/ YAML; collect results + samples", _eval),
    "report": Command("paper-style tables, paper numbers, figures and a comparison from a report config", _report),
    "compare": Command("compare two result folders: metric changes, per-sample wins/losses, a gallery", _compare),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return (
        "usage: perpo [-v] COMMAND [ARGS ...]\n\n"
        "PerPO: measure and fix the visual discrimination of multimodal LLMs (discriminative rewards,\n"
        "listwise preference training, lmms-eval tasks).\n\ncommands:\n" + "\n".join(lines) + "\n\n"
        "`perpo COMMAND --help` explains each command. -v logs at DEBUG level and keeps an error's traceback.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The deepspeed launcher puts --local_rank=N before everything; TrainingArguments reads it after the command.
    launcher = [a for a in argv[:1] if a.startswith("--local_rank")]
    argv = argv[len(launcher) :] + launcher
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    if verbose:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"perpo: unknown command {name!r}\n\n{_usage()}", end="", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # its "defaulting to N threads" on every pandas import
    from perpo.config import ConfigError

    try:
        return COMMANDS[name].run(rest)
    except (ConfigError, FileNotFoundError) as err:  # bad input (incl. RecordError, UnsafePickleError): exit 2
        if verbose:
            logging.getLogger("perpo").exception("the traceback of the error below (-v)")
        print(f"perpo {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
