"""Command configuration: one dataclass per command, parsed by transformers' `HfArgumentParser`.

`perpo <command> [CONFIG.yaml] [--flag value ...]`: the YAML file (optional) gives values first, then flags
override them. A key the dataclasses do not define is an error that names the valid keys, so a typo fails at
start-up instead of being ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import operator
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BOUNDS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<=")}
_FIELD_BOUNDS: dict[dataclasses.Field, dict[str, float]] = {}  # not in `metadata`: argparse gets all of that


def opt(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with `--help` text (`default=MISSING` makes the option required).

    Numeric options declare their range with `gt`, `ge`, `lt`, `le` (as in `opt(0.1, gt=0)`); `check_numbers`
    enforces it, and every numeric option must be finite.
    """
    bounds = {key: kwargs.pop(key) for key in BOUNDS if key in kwargs}
    if isinstance(default, (list, dict, set)):
        value = default
        kwargs["default_factory"] = lambda: type(value)(value)
    else:
        kwargs["default"] = default
    field = dataclasses.field(metadata={"help": help}, **kwargs)
    if bounds:
        _FIELD_BOUNDS[field] = bounds
    return field


def check_numbers(config: Any) -> None:
    """Raise ConfigError unless every int/float field of a dataclass is finite and inside its declared range.

    Called first in each command config's `__post_init__`, so NaN or inf from a flag or a YAML file fails at
    parse time with the option's name, instead of training to NaN.
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        bounds = list(_FIELD_BOUNDS.get(field, {}).items())
        if math.isfinite(value) and all(BOUNDS[key][0](value, bound) for key, bound in bounds):
            continue
        limits = " and ".join(f"{BOUNDS[key][1]} {bound:g}" for key, bound in bounds)
        kind = "a finite number" if isinstance(value, float) else ""
        raise ConfigError(f"--{field.name} must be {' '.join(filter(None, (kind, limits)))}, got {value!r}")


class ConfigError(ValueError):
    """Bad user input — a config, a data file, a record — with a message meant for the user (file, key and fix).

    The CLI prints it and exits with status 2 instead of a traceback.
    """


def check_spares_inputs(option: str, out: str | Path, inputs: Sequence[str | Path | None]) -> None:
    """Refuse, before any work, an output that would replace one of the command's own inputs.

    An output is replaced whole (a folder through `perpo.io.atomic_dir`, a file through `atomic_open`), so an
    input that is the output, or lies inside it, would be lost. Paths are compared resolved, links followed.
    Writing beside an input, or into a folder that holds inputs without replacing it, stays allowed.

    Raises:
        ConfigError: naming the option, the output and the input.
    """
    target = Path(out).expanduser().resolve()
    for value in inputs:
        if value is None or str(value) == "":
            continue
        given = Path(value).expanduser().resolve()
        if given == target or target in given.parents:
            relation = "is" if given == target else "holds"
            raise ConfigError(
                f"{option} {out} {relation} its input {value}, which writing the output would replace: choose another "
                f"{option}"
            )


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


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= low, else a usage error naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default once: not when its help already names one, nor for None or a `--no_x` flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or any(s.startswith("--no_") for s in action.option_strings):
            return text
        return super()._get_help_string(action)


def parse_command(
    dataclass_types: Sequence[type], argv: Sequence[str], prog: str, description: str, usage: str | None = None
) -> tuple:
    """Parse `[CONFIG.yaml] [--flag value ...]` into instances of `dataclass_types`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        list(dataclass_types),
        prog=prog,
        usage=usage or f"{prog} [CONFIG.yaml] [--option VALUE ...]  (options below; a flag overrides the YAML)",
        description=description,
        formatter_class=HelpFormatter,
    )
    for action in parser._actions:  # HfArgumentParser gives `--no_x` the help of `--x`
        negative = next((s for s in action.option_strings if s.startswith("--no_")), None)
        if negative:
            action.help = f"turn --{negative[len('--no_') :]} off"
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
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
    except ConfigError:
        raise
    except ValueError as err:  # a library's __post_init__ (TrainingArguments, GRPOConfig) refusing a combination
        raise ConfigError(" ".join(str(err).split())) from err
    if unknown:  # argparse's one line, not HfArgumentParser's ValueError
        options: dict[str, str] = {}  # normalised -> the first spelling (`--learning_rate`, not its `-` alias)
        for action in parser._actions:
            for spelling in action.option_strings:
                options.setdefault(spelling.replace("-", "_"), spelling)
        flag = next((u for u in unknown if u.startswith("-")), unknown[0]).split("=")[0].replace("-", "_")
        close = difflib.get_close_matches(flag, list(options), n=1)
        hint = f" (did you mean {options[close[0]]}?)" if close else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return tuple(parsed)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows): what a timing was measured on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "machine": f"{platform.platform()} ({cpu_model()}, {os.cpu_count()} logical CPUs)",
        "argv": sys.argv,
    }


def jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (enums and paths as strings), so stored and live configs compare equal."""
    return json.loads(json.dumps(value, default=str))
