"""The `perpo` command line: one subcommand per job, each with its own `--help`.

Every subcommand parses its own arguments (config-driven ones through `HfArgumentParser`, so
`perpo <command> CONFIG.yaml --flag value` works), and imports heavy libraries only when it runs, so
`perpo --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


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


COMMANDS: dict[str, Command] = {
    "setup": Command("install the WordNet data METEOR needs (offline on Debian) and check it loads", _setup),
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
