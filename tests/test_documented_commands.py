"""Every launcher line the docs and config headers print parses with the installed launcher's own parser, and
every copy-paste line of a config header is a line the recipe tests run.

DeepSpeed's `deepspeed` runner takes `--module` (no `-m`) and, like the `launch.py` it starts on each node, reads
abbreviated options after the module too; torchrun needs `--` before the program's arguments. A line that parses
here still has to name a perpo command and a config file that exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SOURCES = [
    ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "lmms_tasks" / "README.md",
    *sorted((ROOT / "perpo" / "configs").glob("*.yaml")), *sorted((ROOT / "eval_configs").glob("*.yaml")),
    *sorted((ROOT / "reports" / "configs").glob("*.yaml")),
]  # fmt: skip
LAUNCHERS = ("deepspeed ", "torchrun ", "accelerate launch ")
SHELL_VARIABLES = {"$NODE": "0", "$HEAD": "10.0.0.1", "$PORT": "29500", "$DATA": "/data"}  # as a user sets them


def printed_lines(path: Path) -> list[str]:
    """The command lines of a file: continuation lines joined, a config header's `#` and comments dropped."""
    lines, text = [], path.read_text(encoding="utf-8")
    if path.suffix == ".yaml":
        text = "\n".join(line.lstrip("#") for line in text.splitlines() if line.startswith("#"))
    for line in re.sub(r"\\\n\s*#?", " ", text).splitlines():
        line = re.sub(r"\s+#\s.*$", "", line.strip().strip("`")).strip()
        if line.startswith(LAUNCHERS) or line.startswith("perpo "):
            lines.append(re.sub(r"\s+", " ", line))
    return lines


LAUNCH_LINES = [(p, line) for p in SOURCES for line in printed_lines(p) if line.startswith(LAUNCHERS)]


def test_the_docs_print_launcher_lines_of_every_kind():
    kinds = {line.split()[0] for _, line in LAUNCH_LINES}
    assert kinds == {"deepspeed", "torchrun", "accelerate"} and len(LAUNCH_LINES) >= 15


def _program(path: Path, line: str, module: str, args: list[str]) -> None:
    """The launched program: perpo.cli with an existing command and config, or lmms-eval."""
    from perpo.cli import COMMANDS

    if module == "lmms_eval":
        return
    assert module == "perpo.cli", f"{path.name}: {line}"
    assert args and args[0] in COMMANDS, f"{path.name}: {line}"
    configs = [a for a in args[1:] if a.endswith(".yaml")]
    assert all((ROOT / c).is_file() for c in configs), f"{path.name}: {line}"


@pytest.mark.parametrize(("path", "line"), LAUNCH_LINES, ids=[f"{p.name}:{line[:60]}" for p, line in LAUNCH_LINES])
def test_a_printed_launcher_line_parses_with_the_launchers_own_parser(path, line, monkeypatch):
    for name, value in SHELL_VARIABLES.items():
        line = line.replace(name, value)
    words = shlex.split(line)
    if words[0] == "deepspeed":
        from deepspeed.launcher import launch, runner

        parsed = runner.parse_args(words[1:])
        assert parsed.module, f"{path.name}: {line}"
        # the runner hands the rest to launch.py on each node, whose parser (of sys.argv) reads it again
        monkeypatch.setattr("sys.argv", ["launch.py", "--world_info", "e30=", "--module", parsed.user_script])
        monkeypatch.setattr("sys.argv", [*__import__("sys").argv, *parsed.user_args])
        launch.parse_args()
        _program(path, line, parsed.user_script, parsed.user_args)
    elif words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        parsed = get_args_parser().parse_args(words[1:])
        assert parsed.module, f"{path.name}: {line}"
        if parsed.training_script == "perpo.cli":  # `--` first, or torchrun takes a later --n for its own flags
            assert words[words.index("perpo.cli") + 1] == "--", f"{path.name}: {line}"
        _program(path, line, parsed.training_script, parsed.training_script_args)
    else:
        from accelerate.commands.launch import launch_command_parser

        parsed = launch_command_parser().parse_args(words[2:])
        assert parsed.module, f"{path.name}: {line}"
        _program(path, line, parsed.training_script, parsed.training_script_args)


def test_a_deepspeed_line_written_the_old_way_is_refused_by_deepspeeds_parser():
    from deepspeed.launcher import runner

    with pytest.raises(SystemExit):
        runner.parse_args(["--num_gpus", "8", "-m", "perpo.cli", "train", "x.yaml"])


def test_every_copy_paste_line_of_a_config_header_is_a_line_the_recipe_tests_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipes", ROOT / "tests" / "integration" / "test_recipes.py")
    recipes = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    try:
        spec.loader.exec_module(recipes)
    finally:
        sys.path.remove(str(ROOT / "tests" / "integration"))
    run = set(recipes.recipe_commands(ROOT / "README.md", "## Pointing it at a real model"))
    for heading in ("## LLaVA-1.5-7B on RefCOCO", "## Qwen2.5-VL-7B on RefCOCO", "## LLaVA-NeXT-7B on page OCR"):
        run |= set(recipes.recipe_commands(ROOT / "docs" / "recipes.md", heading))
    headers = [p for p in SOURCES if p.suffix == ".yaml"]
    concrete = [(p.name, line) for p in headers for line in printed_lines(p) if "$DATA" in line]
    assert len(concrete) >= 7
    assert [(name, line) for name, line in concrete if line not in run] == []
