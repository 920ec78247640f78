"""`perpo iterate`: iterative (on-policy) PerPO, R rounds of sample -> build-data -> train.

One round of PerPO samples its lists from the base model once (offline). Iterative PerPO splits the instructions
into R disjoint shares (round r takes the instructions at positions r, r + R, ...: the same total of generated
responses as one round over them all) and, after each round, samples the next share from the policy it just
trained (the base with the round's adapter merged in), so each round learns from its own current mistakes. Each
round continues training the previous round's adapter (`perpo train --init_adapter`). The reference is an option:

    base      (default) the base model throughout (the adapter disabled: exact, no extra memory), so the KL
              anchor of every round is the same model PerPO and GRPO are anchored to;
    previous  the policy the round starts from (a frozen merged copy), the usual choice of iterative DPO.

Every stage resumes as the single commands do (sampling is append-only, build-data is atomic, a finished training
folder is not trained again), so rerunning the same command continues an interrupted run. Layout:

    out/round_1/{instructions.jsonl, samples.jsonl, lists/, adapter/}, round_2/..., iterate.json
    out/adapter -> round_R/adapter    the final policy, for `perpo eval` (its train_config.json says "perpo_iter")
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from perpo.config import ConfigError, check_numbers, opt

logger = logging.getLogger(__name__)

REFERENCES = ("base", "previous")


@dataclass
class IterateConfig:
    """Arguments of `perpo iterate`; `--train_args` carries `perpo train` flags (loss, lr, β, epochs, LoRA, ...)."""

    model: str = opt(help="base model: a local checkpoint folder")
    instructions: str = opt(help="instruction JSONL (`perpo data instructions`), split into --rounds shares")
    out: str = opt(help="output folder (round_1/ ... round_R/, adapter -> the last round's)")
    rounds: int = opt(2, ge=1, help="rounds of sample -> build-data -> train (1 = plain PerPO)")
    reference: str = opt("base", help="reference of every round: base (the base model) or previous (round start)")
    n: int = opt(20, ge=2, help="responses sampled per instruction (paper: 20)")
    temperature: float = opt(0.5, gt=0, help="sampling temperature (paper: 0.5)")
    max_new_tokens: int = opt(64, ge=1, help="longest sampled response in tokens")
    margin: float | None = opt(None, ge=0, help="list margin of build-data (default: the reward's, 0.8 for IoU)")
    seed: int = opt(0, help="sampling and training seed")
    batch_size: int = opt(16, ge=1, help="instructions per generate call while sampling")
    device: str = opt("auto", help="torch device of sampling: auto, cpu, cuda, ...")
    train_args: str = opt(
        "", help="`perpo train` flags for every round, quoted: --train_args '--loss perpo --learning_rate 1e-4'"
    )

    def __post_init__(self):
        check_numbers(self)
        if self.reference not in REFERENCES:
            raise ConfigError(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        reserved = {"--model_name_or_path", "--data", "--output_dir", "--init_adapter", "--reference", "--n"}
        given = sorted(reserved & {a.split("=")[0] for a in shlex.split(self.train_args)})
        if given:
            raise ConfigError(f"--train_args must not set {', '.join(given)}: perpo iterate sets them per round")


def round_instructions(cfg: IterateConfig, rounds_dir: Path) -> list[Path]:
    """Write each round's share of the instructions (round r: positions r, r + R, ...); returns the files."""
    from perpo.data.schema import dump_record, load_records

    records = load_records(Path(cfg.instructions), stage="instructions")
    if len(records) < cfg.rounds:
        raise ConfigError(f"{cfg.instructions}: {len(records)} instructions cannot make {cfg.rounds} rounds")
    source_root = Path(cfg.instructions).resolve().parent
    files = []
    for r in range(cfg.rounds):
        folder = rounds_dir / f"round_{r + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        share = [_absolute_image(record, source_root) for record in records[r :: cfg.rounds]]
        path = folder / "instructions.jsonl"
        text = "".join(dump_record(record) for record in share)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        files.append(path)
    return files


def _absolute_image(record: dict, root: Path) -> dict:
    image = record.get("image")
    if image and not Path(image).is_absolute():
        return record | {"image": str(root / image)}
    return record


def run_iterate(cfg: IterateConfig, callbacks: Callable[[int, Path], list] | None = None) -> dict:
    """Run the rounds (see the module docstring); returns the summary also written to `out/iterate.json`.

    `callbacks(round, folder)` gives each round's training callbacks (see `perpo.training.trainer.run_train`).
    """
    from transformers import TrainingArguments

    from perpo.config import parse_command
    from perpo.data.build import BuildDataConfig, run_build_data
    from perpo.io import write_json
    from perpo.sampling.sample import SampleConfig, run_sample
    from perpo.training.trainer import PerPOArguments, run_train

    out = Path(cfg.out).resolve()  # absolute: the rounds' adapters are recorded in sampler settings and configs
    flags = [PerPOArguments, TrainingArguments]
    check_train_args(flags, _train_argv(cfg, out / "round_1", None))  # before any folder is made or sample drawn
    files = round_instructions(cfg, out)
    adapter: Path | None = None
    rounds = []
    for r, instructions in enumerate(files, start=1):
        folder = instructions.parent
        began = time.perf_counter()
        run_sample(
            SampleConfig(
                model=cfg.model, adapter=str(adapter or ""), instructions=str(instructions),
                out=str(folder / "samples.jsonl"), n=cfg.n, temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device,
                progress=False,
            )
        )  # fmt: skip
        sampled = time.perf_counter()
        build = {"samples": str(folder / "samples.jsonl"), "out": str(folder / "lists")}
        stats = run_build_data(BuildDataConfig(**build, **({"margin": cfg.margin} if cfg.margin is not None else {})))
        kept = stats["lists"]["kept"]
        if kept == 0:
            raise ConfigError(f"round {r}: no list of {folder / 'samples.jsonl'} passed the margin; lower --margin")
        args, training = parse_command(flags, _train_argv(cfg, folder, adapter), prog="perpo train", description="")
        built = time.perf_counter()
        adapter = run_train(args, training, callbacks(r, folder) if callbacks else None)
        rounds.append(
            {
                "round": r,
                "instructions": stats["lists"]["in"],
                "lists_kept": kept,
                "mean_best_reward": stats["best_of_n"]["mean_best"][-1],
                "sample_seconds": round(sampled - began, 2),
                "train_seconds": round(time.perf_counter() - built, 2),
            }
        )
        print(f"round {r} of {cfg.rounds}: {kept} of {rounds[-1]['instructions']} lists kept, trained -> {adapter}")
    _mark_iterative(adapter, cfg)
    final = out / "adapter"
    if final.is_symlink() or final.exists():
        final.unlink()
    final.symlink_to(adapter.relative_to(out), target_is_directory=True)
    summary = {
        "rounds": rounds,
        "reference": cfg.reference,
        "generated_responses": sum(x["instructions"] for x in rounds) * cfg.n,
        "adapter": str(final),
    }
    write_json(out / "iterate.json", summary)
    return summary


def check_train_args(flags: list[type], argv: list[str]) -> None:
    """Parse `perpo train` flags as the rounds will and run `perpo train`'s option checks, turning argparse's
    usage-and-error exit into one ConfigError.

    Raises:
        ConfigError: `--train_args: <what is wrong>` (an unknown flag, a value of the wrong type, lr 0, ...).
    """
    import contextlib
    import io

    from perpo.config import parse_command
    from perpo.training.trainer import check_training_args

    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            _, training = parse_command(flags, argv, prog="perpo train", description="")
        check_training_args(training)
    except SystemExit:
        lines = printed.getvalue().strip().splitlines() or ["not valid perpo train flags"]
        raise ConfigError(f"--train_args: {lines[-1].removeprefix('perpo train: error: ')}") from None
    except ConfigError as err:
        raise ConfigError(f"--train_args: {err}") from None


def _train_argv(cfg: IterateConfig, folder: Path, adapter: Path | None) -> list[str]:
    argv = [*shlex.split(cfg.train_args), "--model_name_or_path", cfg.model]
    argv += ["--data", str(folder / "lists" / "train.jsonl"), "--output_dir", str(folder / "adapter")]
    argv += ["--n", str(cfg.n), "--seed", str(cfg.seed)]
    argv += ["--reference", "adapter" if cfg.reference == "base" else "copy"]
    return argv + (["--init_adapter", str(adapter)] if adapter is not None else [])


def _mark_iterative(adapter: Path, cfg: IterateConfig) -> None:
    """Name the final policy's method in its train_config.json, so the reports list it as iterative PerPO."""
    from perpo.io import write_json

    path = adapter / "train_config.json"
    stored = json.loads(path.read_text(encoding="utf-8"))
    write_json(path, stored | {"method": "perpo_iter", "rounds": cfg.rounds, "reference_policy": cfg.reference})
