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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


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
    from perpo.tiny import TinySpec

    defaults = TinySpec()
    parser = argparse.ArgumentParser(
        prog="perpo tiny-model",
        description="Build the tiny LLaVA from config (CLIP-style tower + Llama-style LM + local tokenizer and "
        "processor) with random weights and save it with save_pretrained. Nothing is downloaded.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"(default {value})")
    args = parser.parse_args(argv)
    from perpo.tiny import save_tiny_model

    spec = TinySpec(**{k: getattr(args, k) for k in vars(defaults)})
    out = save_tiny_model(args.out, spec)
    print(f"tiny LLaVA written to {out} ({spec.image_tokens} image tokens per image)")
    return 0


def _add_synth_parser(sub) -> None:
    synth = sub.add_parser(
        "synth",
        help="render the synthetic grounding benchmark (refer layout + flat JSONL)",
        description="Render scenes of coloured shapes with referring expressions and exact boxes for the "
        "train/val/test splits, written both in the RefCOCO refer layout and as flat JSONL. Deterministic: the "
        "same seed gives byte-identical files.",
    )
    synth.add_argument("--out", required=True, type=Path, help="output folder (replaced atomically)")
    synth.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    synth.add_argument("--train", type=int, default=4000, help="train scenes (default 4000)")
    synth.add_argument("--val", type=int, default=300, help="val scenes (default 300)")
    synth.add_argument("--test", type=int, default=300, help="test scenes (default 300)")
    synth.add_argument("--size", type=int, default=64, help="canvas side in pixels (default 64)")
    synth.set_defaults(handler=_synth_data)


def _synth_data(args, parser) -> int:
    from perpo.data.synth import SynthSpec, build_synth

    counts = {"train": args.train, "val": args.val, "test": args.test}
    spec = SynthSpec(width=args.size, height=args.size, counts=counts)
    out = build_synth(args.out, seed=args.seed, spec=spec)
    manifest = json.loads((out / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        print(f"{split:>5}: {info['scenes']} scenes, {info['expressions']} expressions -> {out / info['jsonl']}")
    return 0


def _warmup(argv: list[str]) -> int:
    from perpo.config import parse_command
    from perpo.warmup import WarmupConfig, run_warmup

    (cfg,) = parse_command(
        [WarmupConfig],
        argv,
        prog="perpo warmup",
        description="Supervised warm-up of the tiny LLaVA on the synthetic train split, until it is 'moderately "
        "capable' (answers in the box format, a fair share of boxes right) like the paper's base models. "
        "Resumable: rerun the same command after an interruption.",
    )
    log = run_warmup(cfg)
    last = log["evals"][-1] if log["evals"] else {}
    ap50 = last.get("ap50", float("nan"))
    print(f"warm-up done in {log['seconds'] / 60:.1f} min; val AP@50 {ap50:.3f} -> {cfg.out}")
    return 0


def _demo(argv: list[str]) -> int:
    from perpo.config import parse_command
    from perpo.demo import DemoConfig, run_demo

    (cfg,) = parse_command(
        [DemoConfig],
        argv,
        prog="perpo demo",
        description="The embedded default end to end on CPU: synthetic data, the warmed-up tiny LLaVA, and its AP@50.",
    )
    run_demo(cfg)
    return 0


DATA_PARSERS = (_add_synth_parser,)


def _data(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="perpo data", description="Build datasets (one subcommand per source).")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for add_parser in DATA_PARSERS:
        add_parser(sub)
    args = parser.parse_args(argv)
    return args.handler(args, parser)


COMMANDS: dict[str, Command] = {
    "setup": Command("install the WordNet data METEOR needs (offline on Debian) and check it loads", _setup),
    "tiny-model": Command("build the tiny LLaVA from config and save it (model + processor)", _tiny_model),
    "data": Command("build datasets: `perpo data SOURCE` (`perpo data --help` lists the sources)", _data),
    "warmup": Command("supervised warm-up of the tiny LLaVA on the synthetic train split", _warmup),
    "demo": Command("run the embedded default end to end (what `make demo` runs)", _demo),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return (
        "usage: perpo [-v] COMMAND [ARGS ...]\n\n"
        "PerPO: measure and fix the visual discrimination of multimodal LLMs (discriminative rewards,\n"
        "listwise preference training, lmms-eval tasks).\n\ncommands:\n" + "\n".join(lines) + "\n\n"
        "`perpo COMMAND --help` explains each command. -v logs at DEBUG level.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    from perpo.config import ConfigError

    try:
        return COMMANDS[name].run(rest)
    except (ConfigError, FileNotFoundError) as err:  # bad input (incl. RecordError, UnsafePickleError): exit 2
        print(f"perpo {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
