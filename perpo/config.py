"""Command configuration: one dataclass per command, parsed by transformers' `HfArgumentParser`.

`perpo <command> [CONFIG.yaml] [--flag value ...]`: the YAML file (optional) gives values first, then flags
override them. A key the dataclasses do not define is an error that names the valid keys, so a typo fails at
start-up instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def opt(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with `--help` text (`default=MISSING` makes the option required)."""
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


class ConfigError(ValueError):
    """Bad user input — a config, a data file, a record — with a message meant for the user (file, key and fix).

    The CLI prints it and exits with status 2 instead of a traceback.
    """


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
    return data


def check_keys(keys: Sequence[str], valid: Sequence[str], source: str) -> None:
    """Raise ConfigError for keys not in `valid`, suggesting the closest valid names."""
    unknown = [k for k in keys if k not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(f"{source}: unknown option(s) {', '.join(hints)}. Valid options: {', '.join(sorted(valid))}")


def parse_command(dataclass_types: Sequence[type], argv: Sequence[str], prog: str, description: str) -> tuple:
    """Parse `[CONFIG.yaml] [--flag value ...]` into instances of `dataclass_types`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(list(dataclass_types), prog=prog, description=description)
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        path, argv = argv[0], argv[1:]
        values = load_yaml(path)
        valid = [f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init]
        check_keys(list(values), valid, path)
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    return tuple(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False))


def run_metadata() -> dict[str, Any]:
    """Git SHA, package versions and machine: written beside every result so a run can be traced."""
    from importlib import metadata

    versions = {}
    for name in ("perpo", "torch", "transformers", "peft", "deepspeed", "lmms-eval", "nltk", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    here = Path(__file__).parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=here)
        changed = subprocess.run(  # uncommitted changes to tracked files make the SHA alone misleading
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
        )
        sha = sha.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        sha = None
    return {
        "git_sha": sha,
        "versions": versions,
        "python": sys.version.split()[0],
        "machine": f"{platform.platform()} ({platform.processor() or platform.machine()})",
        "argv": sys.argv,
    }


def save_resolved(out_dir: str | Path, name: str, *configs: Any) -> Path:
    """Write the resolved config(s) plus run metadata to `<out_dir>/<name>.json` (atomically)."""
    from perpo.io import write_json

    payload = {type(c).__name__: dataclasses.asdict(c) for c in configs}
    payload["meta"] = run_metadata()
    return write_json(Path(out_dir) / f"{name}.json", json.loads(json.dumps(payload, default=str)))
