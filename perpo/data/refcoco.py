"""`perpo data refcoco`: the standard RefCOCO / RefCOCO+ / RefCOCOg evaluation splits as flat JSONL.

Reads the `refer` annotations (`<refer_root>/<dataset>/instances.json` + `refs(<split_by>).p`, via pycocotools and
the restricted unpickler of `perpo.data.refer`) and the COCO train2014 images, and writes, atomically:

    <out>/<key>_<split>.jsonl   one row per referring expression (the rows of `perpo.data.refer.load_refer_rows`)
    <out>/images                a symbolic link to the COCO image folder (rows say "images/<file_name>")
    <out>/manifest.json         sources, split_by, counts and the sha256 of every JSONL

`key` is `refcoco`, `refcoco_plus` or `refcocog` (file and task names avoid the "+"); the rows keep the refer
dataset name (`"refcoco+"`). The splits are the standard ones (`perpo.data.refer.STANDARD_SPLITS`): RefCOCO and
RefCOCO+ (unc) val/testA/testB, RefCOCOg (umd) val/test. The images are linked, not copied (COCO train2014 is
13 GB), so the folder stays valid as long as the image folder stays where it is. The lmms-eval tasks read this
folder through the `PERPO_REFCOCO_DIR` environment variable.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from perpo.data.refer import DEFAULT_SPLIT_BY, STANDARD_SPLITS, load_refer_rows
from perpo.io import atomic_dir, write_json, write_jsonl

logger = logging.getLogger(__name__)

DATASET_KEYS: dict[str, str] = {"refcoco": "refcoco", "refcoco_plus": "refcoco+", "refcocog": "refcocog"}
"""File/task key → refer dataset name."""
FORMAT_VERSION = 1
IMAGES_LINK = "images"


def dataset_key(name: str) -> str:
    """Normalise a user's dataset name ("refcoco+", "refcoco_plus", "RefCOCOg") to a key of `DATASET_KEYS`.

    Raises:
        ValueError: If the name is not one of the three datasets.
    """
    lowered = name.strip().lower()
    for key, refer_name in DATASET_KEYS.items():
        if lowered in (key, refer_name):
            return key
    valid = ", ".join(sorted({*DATASET_KEYS, *DATASET_KEYS.values()}))
    raise ValueError(f"unknown dataset {name!r}; valid names: {valid}")


def jsonl_name(key: str, split: str) -> str:
    """File name of one split in the output folder, e.g. `refcoco_plus_testA.jsonl`."""
    return f"{key}_{split}.jsonl"


def build_refcoco(
    refer_root: str | Path,
    coco_images: str | Path,
    out: str | Path,
    datasets: Sequence[str] = tuple(DATASET_KEYS),
) -> Path:
    """Write the standard evaluation splits of the chosen datasets into `out` (replaced atomically).

    Args:
        refer_root: Folder holding `<dataset>/instances.json` and `<dataset>/refs(<split_by>).p`.
        coco_images: Folder of the COCO train2014 images named by `instances.json`.
        out: Output folder.
        datasets: Dataset names (`refcoco`, `refcoco+`/`refcoco_plus`, `refcocog`).

    Returns:
        `out`.

    Raises:
        FileNotFoundError: If an annotation file or the image folder is missing, or rows name images that are
            not in `coco_images` (the first few are listed).
        ValueError: For an unknown dataset name.
    """
    refer_root, coco_images, out = Path(refer_root), Path(coco_images).resolve(), Path(out)
    keys = list(dict.fromkeys(dataset_key(name) for name in datasets))
    if not coco_images.is_dir():
        raise FileNotFoundError(f"COCO image folder {coco_images} not found (--coco_images: the train2014 images)")
    manifest: dict = {
        "format_version": FORMAT_VERSION,
        "refer_root": str(refer_root.resolve()),
        "coco_images": str(coco_images),
        "datasets": {},
    }
    with atomic_dir(out) as tmp:
        os.symlink(coco_images, tmp / IMAGES_LINK, target_is_directory=True)
        for key in keys:
            name = DATASET_KEYS[key]
            info = {"name": name, "split_by": DEFAULT_SPLIT_BY[name], "splits": {}}
            for split in STANDARD_SPLITS[name]:
                rows = load_refer_rows(refer_root, name, split, image_dir=coco_images, image_prefix=f"{IMAGES_LINK}/")
                _check_images(rows, tmp, f"{name} {split}")
                path = write_jsonl(tmp / jsonl_name(key, split), rows)
                info["splits"][split] = {
                    "jsonl": path.name,
                    "expressions": len(rows),
                    "objects": len({row["ref_id"] for row in rows}),
                    "images": len({row["image_id"] for row in rows}),
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                }
                logger.info("%s %s: %d expressions -> %s", name, split, len(rows), path.name)
            manifest["datasets"][key] = info
        write_json(tmp / "manifest.json", manifest)
    logger.info("RefCOCO evaluation splits written to %s", out)
    return out


def _check_images(rows: Sequence[dict], root: Path, what: str) -> None:
    missing = sorted({row["image"] for row in rows if not (root / row["image"]).is_file()})
    if missing:
        shown = ", ".join(Path(m).name for m in missing[:5])
        raise FileNotFoundError(
            f"{what}: {len(missing)} image(s) named by the annotations are not in the COCO image folder "
            f"(e.g. {shown}). --coco_images must be the COCO train2014 folder."
        )
