"""Crash-safe file output: everything the project writes appears whole or not at all; and the file readers.

A file or folder is built under a temporary name in the same directory and renamed into place, so a crash,
Ctrl-C or a bad input never leaves a half-written result where a later step would trust it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perpo.config import ConfigError, jsonable, run_metadata

if TYPE_CHECKING:
    from PIL import Image


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `path` when the block succeeds.

    On an exception the temporary directory is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any mkdir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file beside `path`; rename it onto `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_umask())
    try:
        with open(tmp_name, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented, key-sorted JSON atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")
    return Path(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write one JSON object per line atomically (keys sorted, so equal data gives equal bytes)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    return Path(path)


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """`(line number, text)` of every line of a UTF-8 text file.

    Raises:
        ConfigError: the path is a folder, or a line is not UTF-8 (naming the file, the line and the byte).
    """

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the file itself")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                    "save the file as UTF-8"
                ) from err


def count_lines(path: str | os.PathLike) -> int:
    """Non-empty lines of a JSONL file (its records), without parsing them."""
    return sum(1 for _, line in text_lines(path) if line.strip())


def jsonl_objects(path: str | os.PathLike, error: type[Exception] = ConfigError) -> Iterator[tuple[int, dict]]:
    """`(line number, object)` of every non-blank line of a JSONL file: the one JSONL reader of the project.

    Raises:
        `error` (ConfigError unless given): a line that is not JSON (a truncated last line, typically) or not a
            JSON object, naming the file and the line; `text_lines`' errors for a folder or a byte not UTF-8.
    """
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{number}: not valid JSON ({err.msg}; a truncated line?)") from err
        if not isinstance(row, dict):
            raise error(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The objects of a JSONL file, in order (`jsonl_objects`' errors)."""
    return [row for _, row in jsonl_objects(path)]


def utf8_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file (`text_lines`' errors for a folder or a byte that is not UTF-8)."""
    return "".join(line for _, line in text_lines(path))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A whole JSON file; an unreadable one raises ConfigError naming it (`what` says what it should be)."""

    text = utf8_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        state = "empty" if not text.strip() else f"not valid JSON ({err.msg}, line {err.lineno})"
        raise ConfigError(f"{path}: {what} is {state}") from err


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB, fully read (so the file handle is closed at once).

    Raises:
        ConfigError: the file is not an image PIL can read, or is a folder (naming it).
        FileNotFoundError: there is no such file.
    """
    from PIL import Image, UnidentifiedImageError

    if Path(path).is_dir():
        raise ConfigError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ConfigError(f"{path}: not an image file that can be read ({err})") from err


def save_resolved(out_dir: str | Path, name: str, *configs: Any, extra: dict | None = None) -> Path:
    """Write the resolved config(s), `extra` and run metadata to `<out_dir>/<name>.json` (atomically)."""
    payload = {type(c).__name__: dataclasses.asdict(c) for c in configs} | (extra or {})
    payload["meta"] = run_metadata()
    return write_json(Path(out_dir) / f"{name}.json", jsonable(payload))
