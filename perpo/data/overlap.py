"""Evaluation images kept out of training: `perpo build-data --exclude_eval`.

Training lists are compared with evaluation sets by the sha256 of their image files, so a page or photo is found
whatever its file name or folder. An evaluation set is named by:

    a folder            every `*.jsonl` and `*_page_ocr.json` in it (the output of `perpo data refcoco`, a Fox
                        folder with `en_page_ocr.json` + `en_pdf_png/`)
    a `.jsonl` file     rows or records with an `image` field (relative to the file's folder, or absolute)
    a `.json` file      a Fox-style page list (`[{"image": "en_1.png", ...}]`, pages in `<lang>_pdf_png/` beside it)

Only the images these files name are hashed, never every file under a linked image folder (a RefCOCO evaluation
folder links all of COCO train2014, which also holds the training images).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from perpo.config import ConfigError


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fox_image_dir(json_path: Path) -> Path:
    """Where a Fox page list's images are: `en_page_ocr.json` -> `en_pdf_png/` beside it."""
    return json_path.parent / f"{json_path.name.split('_page_ocr')[0]}_pdf_png"


def _named_images(path: Path) -> Iterator[Path]:
    """The image files an evaluation file names, resolved as its readers resolve them."""
    from perpo.io import read_json, read_jsonl

    if path.suffix == ".jsonl":
        entries, folders = read_jsonl(path), [path.parent]
    else:
        entries, folders = read_json(path, "a Fox page list"), [_fox_image_dir(path), path.parent]
    if not isinstance(entries, list):
        raise ConfigError(f"--exclude_eval {path}: expected a list of entries with an 'image' field")
    for number, entry in enumerate(entries, start=1):
        image = entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(image, str) or not image:
            continue  # a text-only row has no image to keep out
        candidates = [Path(image)] if Path(image).is_absolute() else [folder / image for folder in folders]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(
                f"--exclude_eval {path}: entry {number} names image {image!r}, which is not at {candidates[0]}; "
                "the evaluation set must be readable to be kept out of training"
            )
        yield found


def eval_images(paths: Sequence[str | Path]) -> dict[str, str]:
    """sha256 -> a readable name (`<eval file>: <image>`) of every image the evaluation sets name.

    Raises:
        ConfigError: a path is missing, names no evaluation file, or a file is unreadable or names a missing image.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl")) + sorted(path.glob("*_page_ocr.json"))
            if not found:
                raise ConfigError(f"--exclude_eval {path}: a folder with no *.jsonl or *_page_ocr.json file in it")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--exclude_eval {path}: no such file or folder")
    hashes: dict[str, str] = {}
    seen: dict[Path, str] = {}
    for file in files:
        for image in _named_images(file):
            key = image.resolve()
            if key not in seen:
                seen[key] = file_sha256(image)
                hashes.setdefault(seen[key], f"{file}: {image.name}")
    return hashes


def overlapping(images: Sequence[Path | None], hashes: dict[str, str]) -> list[tuple[int, str]]:
    """`(index, evaluation image)` of every image among `images` whose bytes are an evaluation image's."""
    found, cache = [], {}
    for index, image in enumerate(images):
        if image is None or not image.is_file():  # a missing image is reported by the caller's own check
            continue
        key = image.resolve()
        if key not in cache:
            cache[key] = file_sha256(image)
        if cache[key] in hashes:
            found.append((index, hashes[cache[key]]))
    return found
