"""Read the RefCOCO `refer` layout (instances.json + pickled refs) into flat grounding rows.

Layout, per dataset (lichengunc/refer):
    <root>/<dataset>/instances.json      COCO format: images, annotations (bbox = [x, y, w, h] pixels), categories
    <root>/<dataset>/refs(<split_by>).p  pickled list of refs: ref_id, ann_id, image_id, split, sentences, ...
Images live elsewhere (COCO train2014 for all of RefCOCO/+/g); `image_dir` says where.

The same reader serves real RefCOCO/RefCOCO+/RefCOCOg and the synthetic benchmark (`perpo data synth` writes
this layout), so both flow through one code path into the flat JSONL the lmms-eval tasks read.

Pickles can run code when loaded. Refs files are therefore read with a restricted unpickler that admits only
plain containers and scalars; a pickle that asks for any class or function is refused.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

from perpo.config import ConfigError

logger = logging.getLogger(__name__)

# Standard dataset → default split_by (RefCOCOg: umd, the split everyone reports).
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "synth": "unc"}
STANDARD_SPLITS = {
    "refcoco": ("val", "testA", "testB"),
    "refcoco+": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
    "synth": ("val", "test"),
}


class UnsafePickleError(ConfigError, pickle.UnpicklingError):
    """A refs pickle asked to import a class or function: refused, since loading it could run code."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Lists, dicts, strings and numbers only. The refer toolkit wrote its pickles under Python 2, whose `str` is
    bytes: they load as `bytes` here (`encoding="bytes"`) and `_text` decodes them as UTF-8 (Latin-1 where that
    fails), so an expression written in UTF-8 by Python 2 reads as the same text (Python 3's pickles have none)."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(
            f"{self._source}: refused to load '{module}.{name}'. A refs file holds only lists, dicts, strings and "
            "numbers; this one asks to import code, which could run arbitrary commands. Re-download the refs "
            "file from its official source."
        )


def _text(value):
    """`value` with every `bytes` (a Python 2 `str`) decoded, in dict keys and values and list items."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def load_refs(path: str | Path) -> list[dict]:
    """Load a refs(<split_by>).p pickle with the restricted unpickler (Python 2's protocols 0-2 and Python 3's).

    Raises:
        UnsafePickleError: the pickle references any global (class, function), e.g. a crafted payload.
        ConfigError: the file is empty, truncated or corrupt, or holds something other than a list of ref dicts.
    """
    path = Path(path)
    fix = (
        "re-download the refs file from its official source (or re-extract it from its archive; for the synthetic "
        "benchmark, re-run `perpo data synth`)"
    )
    with path.open("rb") as handle:
        try:
            refs = _text(_PlainDataUnpickler(io.BufferedReader(handle), str(path)).load())
        except UnsafePickleError:
            raise
        except Exception as err:  # a damaged pickle raises EOFError, UnpicklingError, ValueError, KeyError, ...
            state = "empty" if path.stat().st_size == 0 else f"truncated or corrupt ({type(err).__name__}: {err})"
            raise ConfigError(f"{path}: refs pickle is {state}; {fix}") from err
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ConfigError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}; {fix}")
    return refs


def split_matches(ref_split: str, split: str) -> bool:
    """The refer API's split rule: testA/testB/testC by letter, 'test' for any test split, else exact."""
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


@dataclass(frozen=True)
class ReferPaths:
    """Where one dataset of the refer layout lives."""

    root: Path
    dataset: str
    split_by: str

    @property
    def instances(self) -> Path:
        return self.root / self.dataset / "instances.json"

    @property
    def refs(self) -> Path:
        return self.root / self.dataset / f"refs({self.split_by}).p"

    def check(self) -> None:
        for path in (self.instances, self.refs):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found. Expected the refer layout <root>/{self.dataset}/instances.json and "
                    f"<root>/{self.dataset}/refs({self.split_by}).p (see https://github.com/lichengunc/refer)."
                )


def load_refer_rows(
    root: str | Path,
    dataset: str,
    split: str,
    *,
    split_by: str | None = None,
    image_dir: str | Path,
    image_prefix: str = "",
) -> list[dict]:
    """Flatten one split of a refer dataset into one row per referring expression (sentence).

    Args:
        root: folder holding `<dataset>/instances.json` and `<dataset>/refs(<split_by>).p`.
        dataset: e.g. "refcoco", "refcoco+", "refcocog", "synth".
        split: "train", "val", "test", "testA", "testB" (refer API rules).
        split_by: "unc", "umd", "google"; default per dataset (`DEFAULT_SPLIT_BY`).
        image_dir: folder of the image files named by `instances.json` (checked to exist).
        image_prefix: prefix written before each file name in the rows' "image" field (e.g. a path relative
            to the JSONL's folder); the file itself is looked up under `image_dir`.

    Returns:
        Rows sorted by (ref_id, sent_id): id, dataset, split, image, width, height, bbox (COCO xywh pixels),
        expression, ref_id, ann_id, image_id, sent_id, category.
    """
    from pycocotools.coco import COCO

    paths = ReferPaths(Path(root), dataset, split_by or DEFAULT_SPLIT_BY.get(dataset, "unc"))
    paths.check()
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} not found (for {paths.instances})")
    coco = _quiet_coco(COCO, paths.instances)
    categories = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    rows = []
    for ref in sorted(_checked_refs(paths.refs), key=lambda r: r["ref_id"]):
        if not split_matches(ref["split"], split):
            continue
        where = f"{paths.refs}: ref {ref['ref_id']}"
        ann = coco.anns.get(ref["ann_id"])
        image = coco.imgs.get(ref["image_id"])
        if ann is None or image is None:
            missing = f"annotation {ref['ann_id']}" if ann is None else f"image {ref['image_id']}"
            raise ConfigError(f"{where} names {missing}, which {paths.instances} does not hold; {REFER_FIX}")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise ConfigError(f"{paths.instances}: annotation {ref['ann_id']} has bbox {box!r}, not [x, y, w, h]")
        for sentence in sorted(ref["sentences"], key=lambda s: s["sent_id"]):
            rows.append(
                {
                    "id": f"{dataset}_{split}_{sentence['sent_id']}",
                    "dataset": dataset,
                    "split": split,
                    "image": image_prefix + image["file_name"],
                    "width": int(image["width"]),
                    "height": int(image["height"]),
                    "bbox": [float(v) for v in ann["bbox"]],
                    "expression": sentence["sent"],
                    "ref_id": int(ref["ref_id"]),
                    "ann_id": int(ref["ann_id"]),
                    "image_id": int(ref["image_id"]),
                    "sent_id": int(sentence["sent_id"]),
                    "category": categories.get(ann["category_id"], ""),
                }
            )
    if not rows:
        logger.warning("%s: no refs in split %r", paths.refs, split)
    return rows


REFER_FIX = "re-download or re-extract the refer annotations"
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def _checked_refs(path: Path) -> list[dict]:
    """`load_refs`, with every ref holding the keys the rows are made of (naming the first that lacks one)."""
    refs = load_refs(path)
    for index, ref in enumerate(refs):
        missing = [key for key in REF_KEYS if key not in ref]
        sentences = ref.get("sentences")
        whole = isinstance(sentences, list) and all(
            isinstance(t, dict) and {"sent_id", "sent"} <= set(t) for t in sentences
        )
        if not missing and not whole:
            missing = ["sentences[].sent_id / sent"]
        if missing:
            raise ConfigError(f"{path}: ref {index} (ref_id {ref.get('ref_id')!r}) has no {missing[0]!r}; {REFER_FIX}")
    return refs


def _quiet_coco(coco_cls, path: Path):
    """A pycocotools index of an instances file, read with a clear error for a broken one (progress kept off the
    console)."""
    import contextlib

    from perpo.io import read_json

    data = read_json(path, "a COCO instances file")
    missing = [key for key in ("images", "annotations") if not isinstance(data, dict) or key not in data]
    if missing:
        raise ConfigError(f"{path}: a COCO instances file needs {' and '.join(repr(k) for k in missing)}; {REFER_FIX}")
    coco = coco_cls()
    coco.dataset = {"categories": [], **data}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
