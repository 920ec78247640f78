"""Finding and reading result files: lmms-eval / `perpo eval` layouts, results JSON, samples JSONL, run metadata.

Accepted inputs (a path may be any of these; nothing is inferred from file or folder names beyond the layouts
lmms-eval and `perpo eval` write):

- a `perpo eval` output folder: `results.json`, `samples/<task>.jsonl`, `eval_config.json`, `command.json`;
- a raw lmms-eval `--output_path` folder: `<model>/<timestamp>_results.json` + `<timestamp>_samples_<task>.jsonl`
  (one run per results file), or one `<model>/` folder of it, or a `*_results.json` file.

Metadata per run, from contents only:

- model, adapter, seed: `eval_config.json` (`EvalConfig`) when present, else the results JSON's
  `config.model_args` (`pretrained=...,adapter=...,seed=...`) and `config.random_seed`;
- method and training settings (loss, N, β, γ, LoRA r/α, learning rate): the copy `perpo eval` keeps in
  `training/`, else the `train_config.json` that
  `perpo train` writes beside the adapter (or into a fully fine-tuned model folder), and the adapter's
  `adapter_config.json`; the margin threshold m from the `stats.json` that `perpo build-data` writes beside the
  training data. No adapter and no training record: method `base`. Relative paths recorded in these files are
  resolved against the current folder (where `perpo eval` / `perpo train` were run, normally the repository root).

A results, samples or metadata file that is not valid JSON of the expected shape is a `ConfigError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perpo.config import ConfigError
from perpo.io import utf8_text

# ---------------------------------------------------------------------------------------------- discovery


def _raw_run(results_file: Path) -> tuple[Path, dict[str, Path]]:
    prefix = results_file.name[: -len("results.json")]
    samples = {
        path.name[len(prefix) + len("samples_") : -len(".jsonl")]: path
        for path in sorted(results_file.parent.glob(f"{prefix}samples_*.jsonl"))
    }
    return results_file, samples


def discover(path: str | Path) -> list[tuple[Path, Path, dict[str, Path]]]:
    """The results files under `path`: `[(run folder, results file, {task: samples file})]`.

    Raises:
        FileNotFoundError: If `path` holds none of the accepted layouts (the message names them).
    """
    path = Path(path)
    if path.is_file() and path.name.endswith("results.json"):
        return [(path.parent, *_raw_run(path))] if path.name != "results.json" else [_perpo_eval_run(path.parent)]
    if (path / "results.json").is_file():
        return [_perpo_eval_run(path)]
    found = sorted(path.glob("*_results.json")) or sorted(path.glob("*/*_results.json"))
    if not found:
        raise FileNotFoundError(
            f"no lmms-eval results under {path}: expected a `perpo eval` folder (results.json, samples/), an "
            "lmms-eval --output_path folder (<model>/<timestamp>_results.json) or a *_results.json file"
        )
    return [(f.parent, *_raw_run(f)) for f in found]


def _perpo_eval_run(folder: Path) -> tuple[Path, Path, dict[str, Path]]:
    samples = {p.stem: p for p in sorted((folder / "samples").glob("*.jsonl"))}
    return folder, folder / "results.json", samples


# ---------------------------------------------------------------------------------------------- metadata


JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _kind(value: Any) -> str:
    return "null" if value is None else JSON_KINDS.get(type(value), "an object")


def _parse_json(text: str, where: str) -> Any:
    """`text` parsed, or ConfigError naming the file `where`."""
    if not text.strip():
        raise ConfigError(f"{where}: empty (the run that wrote it was interrupted? run it again)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON (truncated?) at line {err.lineno}: {err.msg}") from err


def read_results(path: Path) -> dict[str, Any]:
    """An lmms-eval results file: an object whose `results` (and `groups`, if any) map task → {metric: value}.

    Raises:
        ConfigError: empty, truncated or otherwise invalid JSON, or another shape (names the file and the fault).
    """
    data = _parse_json(utf8_text(path), str(path))
    shape = "an object with a 'results' mapping of task: {metric: value}"
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {shape}, got {_kind(data)}")
    if "results" not in data:
        raise ConfigError(f"{path}: expected {shape}; it has no 'results' key")
    for key in ("results", "groups"):
        tasks = data.get(key, {})
        if not isinstance(tasks, dict):
            raise ConfigError(f"{path}: expected {shape}; '{key}' is {_kind(tasks)}")
        for task, values in tasks.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: {key}[{task!r}] is {_kind(values)}, expected a mapping of metric: value")
    return data


def _read_json(path: Path) -> dict | None:
    """A metadata file's object, or None when the file is absent."""
    if not path.is_file():
        return None
    data = _parse_json(utf8_text(path), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {_kind(data)}")
    return data


def parse_model_args(model_args: str | dict | None) -> dict[str, str]:
    """lmms-eval's `--model_args` (`key=value,key=value`, as recorded in `results["config"]`) as a dict."""
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    out: dict[str, str] = {}
    for part in (model_args or "").split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _resolve(recorded: str | None) -> Path | None:
    """A path recorded in a results or config file, resolved against the current folder when relative."""
    if not recorded:
        return None
    return Path(recorded).expanduser()


def training_metadata(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """Method and training settings from a training output folder (adapter or fully fine-tuned model).

    Args:
        folder: The folder `perpo train` wrote (`train_config.json`, `adapter_config.json`).

    Returns:
        The metadata found (`method`, `loss`, `n`, `beta`, `gamma`, `lora_r`, `lora_alpha`, `learning_rate`,
        `margin`, `train_config`), and notes about what could not be read.
    """
    meta: dict[str, Any] = {}
    notes: list[str] = []
    train = _read_json(folder / "train_config.json")
    if train is not None:
        # `perpo train` writes PerPOArguments + TrainingArguments; `perpo grpo` GRPOArguments + GRPOConfig and a
        # top-level "loss": "grpo"; iterative PerPO's last round a top-level "method": "perpo_iter"
        args = train.get("PerPOArguments") or train.get("GRPOArguments") or {}
        training = train.get("TrainingArguments") or train.get("GRPOConfig") or {}
        loss = args.get("loss") or train.get("loss")
        meta.update(
            {
                "method": train.get("method") or loss,
                "loss": loss,
                "n": args.get("n") or training.get("num_generations"),
                "beta": args.get("beta", training.get("beta")),
                "gamma": args.get("gamma"),
                "learning_rate": training.get("learning_rate"),
                "train_config": str(folder / "train_config.json"),
            }
        )
        if args.get("use_lora", True):
            meta.update({"lora_r": args.get("lora_r"), "lora_alpha": args.get("lora_alpha")})
        data = _resolve(args.get("data"))
        stats = _read_json(folder / "stats.json")  # `perpo eval` keeps a copy beside the training record
        if stats is None and data is not None:
            stats = _read_json(data.parent / "stats.json")
        if stats is not None and "margin_threshold" in stats:
            meta["margin"] = stats["margin_threshold"]
        elif data is not None:
            notes.append(f"margin unknown: no stats.json beside the training data {data}")
    adapter = _read_json(folder / "adapter_config.json")
    if adapter is not None:
        meta.setdefault("lora_r", adapter.get("r"))
        meta.setdefault("lora_alpha", adapter.get("lora_alpha"))
        if meta.get("lora_r") is None:
            meta["lora_r"], meta["lora_alpha"] = adapter.get("r"), adapter.get("lora_alpha")
    if train is None:
        notes.append(f"no train_config.json in {folder}: method and training settings unknown")
    return meta, notes


def run_metadata(folder: Path, results: dict) -> tuple[dict[str, Any], list[str]]:
    """Model, adapter, seed, method and training settings of one run (see the module docstring)."""
    notes: list[str] = []
    eval_config = (_read_json(folder / "eval_config.json") or {}).get("EvalConfig")
    config = results.get("config") or {}
    model_args = parse_model_args(config.get("model_args"))
    if eval_config is not None:
        model, adapter, seed = eval_config.get("model"), eval_config.get("adapter"), eval_config.get("seed")
    else:
        model, adapter = model_args.get("pretrained") or results.get("model_name"), model_args.get("adapter")
        seed = model_args.get("seed", config.get("random_seed"))
    meta: dict[str, Any] = {"model": model, "adapter": adapter, "seed": parse_number(seed), "method": "base"}
    trained_from = None
    adapter_dir = _resolve(adapter)
    model_dir = _resolve(model)
    if (folder / "training" / "train_config.json").is_file():
        trained_from = folder / "training"  # the copy `perpo eval` keeps: survives a moved adapter
    elif adapter_dir is not None:
        trained_from = adapter_dir
        if not adapter_dir.is_dir():
            notes.append(f"adapter folder {adapter_dir} not found: method and training settings unknown")
            meta["method"] = "adapter"
    elif model_dir is not None and (model_dir / "train_config.json").is_file():
        trained_from = model_dir  # a fully fine-tuned output of `perpo train`
    if trained_from is not None and trained_from.is_dir():
        found, more = training_metadata(trained_from)
        notes += more
        meta.update({k: v for k, v in found.items() if v is not None})
        if "method" not in found or found["method"] is None:
            meta["method"] = "adapter"
    return meta, notes


def parse_number(value: Any) -> Any:
    """A string as an int, else a float, else as given; any other value as given."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value
