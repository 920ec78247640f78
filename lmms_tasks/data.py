"""Where the `perpo_*` tasks get their documents: folders named by environment variables, or the hub.

A task YAML cannot read environment variables, so every task loads a tiny packaged placeholder file
(`tasks/_placeholder.jsonl`) and its `process_docs` hook replaces it with the real rows, read here at that moment
from the folder the variable names. The rows are rebuilt on every run (`datasets.Dataset.from_list`, nothing
cached), so pointing a variable elsewhere can never serve stale rows. Images stay path strings in a plain column
(opened by `doc_to_visual`), so ids, boxes and sizes survive lmms-eval's removal of image columns before
`process_results`.

- `PERPO_SYNTH_DIR`: the synthetic benchmark folder, from `perpo data synth --out DIR`.
- `PERPO_REFCOCO_DIR`: the RefCOCO/+/g evaluation splits, from
  `perpo data refcoco --refer_root R --coco_images I --out DIR`.
- `PERPO_REFCOCO_SOURCE`: `local` (default: the folder above) or `hub` (the lmms-lab parquet copies, network).
- `PERPO_REFCOCO_HUB_ORG`: hub organisation of those copies (default `lmms-lab`).
- `PERPO_FOX_DIR`: the user's Fox folder (`en_page_ocr.json` + `en_pdf_png/`, `cn_page_ocr.json` + `cn_pdf_png/`),
  the unzipped `focus_benchmark_test` of the hub dataset ucaslcl/Fox_benchmark_data.

Grounding documents (one per referring expression) carry: id, dataset, split, image (absolute path, or a PIL
image in hub mode), file_name, width, height, bbox (COCO xywh pixels), expression, ref_id, ann_id, image_id,
sent_id, category, and the ground truth normalised in both frames, gt_padded and gt_original (xyxy in [0, 1]).
Fox documents carry: id, language, image, file_name, question, reference.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from perpo.model.prompts import fox_question
from perpo.objectives.boxes import gt_box_in_frame

logger = logging.getLogger(__name__)

ENV_SYNTH_DIR = "PERPO_SYNTH_DIR"
ENV_REFCOCO_DIR = "PERPO_REFCOCO_DIR"
ENV_REFCOCO_SOURCE = "PERPO_REFCOCO_SOURCE"
ENV_REFCOCO_HUB_ORG = "PERPO_REFCOCO_HUB_ORG"
ENV_FOX_DIR = "PERPO_FOX_DIR"

REFCOCO_SOURCES = ("local", "hub")
REFCOCO_DATASETS: dict[str, str] = {"refcoco": "refcoco", "refcoco_plus": "refcoco+", "refcocog": "refcocog"}
"""Task key → refer dataset name (the same keys as `perpo.data.refcoco.DATASET_KEYS`)."""
REFCOCO_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco": ("val", "testA", "testB"),
    "refcoco_plus": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
}
HUB_REPOS: dict[str, str] = {"refcoco": "RefCOCO", "refcoco_plus": "RefCOCOplus", "refcocog": "RefCOCOg"}
DEFAULT_HUB_ORG = "lmms-lab"
FOX_LANGUAGES: dict[str, str] = {"en": "en", "cn": "cn"}

PREPARE_SYNTH = "perpo data synth --out DIR"
PREPARE_REFCOCO = "perpo data refcoco --refer_root REFER --coco_images COCO/train2014 --out DIR"
PREPARE_FOX = (
    "download focus_benchmark_test.zip from the hub dataset ucaslcl/Fox_benchmark_data and unzip it "
    "(the folder holding en_page_ocr.json, en_pdf_png/, cn_page_ocr.json, cn_pdf_png/)"
)

GROUNDING_COLUMNS = (
    "id", "dataset", "split", "image", "file_name", "width", "height", "bbox", "expression", "ref_id", "ann_id",
    "image_id", "sent_id", "category", "gt_padded", "gt_original",
)  # fmt: skip


class DataNotFoundError(FileNotFoundError):
    """A task's data folder or file is missing; the message names the variable and the command that prepares it."""


class TaskDataError(ValueError):
    """A task's data file is there but is not what the task reads (its layout, or an environment variable's value)."""


def _fail(message: str) -> DataNotFoundError:
    return DataNotFoundError(message)


def ends_the_run(load: Callable) -> Callable:
    """Make a `process_docs` hook end the lmms-eval run when its data is missing or malformed.

    lmms-eval retries a task's dataset loading five times, prints each failure's traceback and then exits 0 with no
    results. A data folder that is not there will not appear on a retry, so the hook instead prints one line,
    `lmms-eval: error: <what is wrong and the command that prepares it>`, and exits with status 2 (`SystemExit`
    passes through lmms-eval's `except Exception` and tenacity's retry). `perpo eval` turns that line into its own.
    """

    @functools.wraps(load)
    def hook(*args, **kwargs):
        from perpo.config import ConfigError  # read_jsonl's RecordError: a file:line that is not a record
        from perpo.evaluation import DATA_ERROR_PREFIX

        try:
            return load(*args, **kwargs)
        except (DataNotFoundError, TaskDataError, ConfigError) as err:
            print(f"{DATA_ERROR_PREFIX}{err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return hook


def env_folder(variable: str, prepare: str, what: str) -> Path:
    """The folder an environment variable names, checked to exist.

    Args:
        variable: Environment variable name, e.g. `PERPO_SYNTH_DIR`.
        prepare: The command (or step) that prepares the folder, quoted in the error.
        what: What the folder holds, for the error message.

    Raises:
        DataNotFoundError: If the variable is unset or empty, or names no folder.
    """
    value = os.environ.get(variable, "").strip()
    if not value:
        raise _fail(f"{variable} is not set: export {variable}=<{what} folder>, prepared with `{prepare}`.")
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise _fail(f"{variable}={value} is not a folder. Prepare it with `{prepare}`.")
    return folder


def _read_rows(path: Path, variable: str, prepare: str) -> list[dict]:
    from perpo.io import read_jsonl

    if not path.is_file():
        fix = _refer_root_hint(path.parent) or f"Prepare the folder with `{prepare}`."
        raise _fail(f"{path} not found ({variable}={path.parent}). {fix}")
    return read_jsonl(path)


def _refer_root_hint(folder: Path) -> str | None:
    """A sentence for a folder that holds refer annotations (`<dataset>/refs(*).p`) instead of evaluation splits."""
    if not any(folder.glob("*/refs(*).p")):
        return None
    return (
        f"{folder} is a refer root (it holds {REFCOCO_DATASETS['refcoco']}/refs(*).p): the tasks read the evaluation "
        f"splits built from it, `perpo data refcoco --refer_root {folder} --coco_images COCO/train2014 --out DIR`, "
        f"then {ENV_REFCOCO_DIR}=DIR."
    )


def _resolve_images(paths: Iterable[str], root: Path, variable: str) -> list[str]:
    resolved = [str((root / p).resolve()) if not os.path.isabs(p) else p for p in paths]
    missing = [p for p in resolved if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3])
        raise _fail(f"{len(missing)} image file(s) listed under {variable}={root} are missing, e.g. {shown}.")
    return resolved


def grounding_doc(row: dict) -> dict:
    """One flat grounding row (`perpo.data.refer` schema) as a task document, with the GT box in both frames."""
    width, height = int(row["width"]), int(row["height"])
    bbox = [float(v) for v in row["bbox"]]
    image = row["image"]
    return {
        "id": str(row["id"]),
        "dataset": str(row["dataset"]),
        "split": str(row["split"]),
        "image": image,
        "file_name": str(row.get("file_name") or (Path(image).name if isinstance(image, str) else "")),
        "width": width,
        "height": height,
        "bbox": bbox,
        "expression": str(row["expression"]),
        "ref_id": int(row.get("ref_id", -1)),
        "ann_id": int(row.get("ann_id", -1)),
        "image_id": int(row.get("image_id", -1)),
        "sent_id": int(row.get("sent_id", -1)),
        "category": str(row.get("category") or ""),
        "gt_padded": list(gt_box_in_frame(bbox, width, height, "padded")),
        "gt_original": list(gt_box_in_frame(bbox, width, height, "original")),
    }


def _grounding_dataset(rows: list[dict], root: Path, variable: str):
    import datasets

    images = _resolve_images([row["image"] for row in rows], root, variable)
    docs = [grounding_doc({**row, "image": image}) for row, image in zip(rows, images, strict=True)]
    if not docs:
        raise _fail(f"no rows under {variable}={root}")
    return datasets.Dataset.from_list(docs)


def load_synth_docs(split: str):
    """The synthetic benchmark's `split` from `$PERPO_SYNTH_DIR/synth_<split>.jsonl` as a `datasets.Dataset`.

    Raises:
        DataNotFoundError: If the variable, folder or split file is missing.
    """
    root = env_folder(ENV_SYNTH_DIR, PREPARE_SYNTH, "synthetic benchmark")
    rows = _read_rows(root / f"synth_{split}.jsonl", ENV_SYNTH_DIR, PREPARE_SYNTH)
    return _grounding_dataset(rows, root, ENV_SYNTH_DIR)


def _probe_scenes(split: str):
    """The synthetic scenes of `split` (and of train, for POPE's popular objects) from `$PERPO_SYNTH_DIR`."""
    from perpo.embedded.synth_probe import read_scenes

    root = env_folder(ENV_SYNTH_DIR, PREPARE_SYNTH, "synthetic benchmark")
    if not (root / "synth" / "instances.json").is_file():
        raise _fail(f"{root / 'synth' / 'instances.json'} not found ({ENV_SYNTH_DIR}={root}). Prepare the folder "
                    f"with `{PREPARE_SYNTH}`.")  # fmt: skip
    scenes = read_scenes(root)
    if split not in scenes:
        raise _fail(f"{root / f'synth_{split}.jsonl'} not found ({ENV_SYNTH_DIR}={root}). Prepare the folder with "
                    f"`{PREPARE_SYNTH}`.")  # fmt: skip
    return root, scenes


def _probe_dataset(rows: list[dict], root: Path, scenes):
    import datasets

    sizes = {scene.image: (scene.width, scene.height) for scene in scenes}
    images = _resolve_images([row["image"] for row in rows], root, ENV_SYNTH_DIR)
    docs = [
        {**row, "image": image, "width": sizes[row["image"]][0], "height": sizes[row["image"]][1]}
        for row, image in zip(rows, images, strict=True)
    ]
    return datasets.Dataset.from_list(docs)


def load_pope_docs(split: str, method: str):
    """POPE's yes/no probes (`perpo.embedded.synth_probe.pope_rows`) on the synthetic scenes of `split`, the absent
    objects chosen by `method`; "popular" counts the objects of the train scenes.

    Raises:
        DataNotFoundError: the variable, the folder, its annotations or the split (or, for "popular", the train
            split) is missing.
    """
    from perpo.embedded.synth_probe import pope_rows, popularity

    root, scenes = _probe_scenes(split)
    if method == "popular" and "train" not in scenes:
        raise _fail(f"POPE's popular objects are counted on the train scenes: {root / 'synth_train.jsonl'} not "
                    f"found ({ENV_SYNTH_DIR}={root}).")  # fmt: skip
    rows = pope_rows(scenes[split], method, popular=popularity(scenes.get("train", [])), split=split)
    return _probe_dataset(rows, root, scenes[split])


def load_describe_docs(split: str):
    """The description probe (`perpo.embedded.synth_probe.describe_rows`) on the synthetic scenes of `split`."""
    from perpo.embedded.synth_probe import describe_rows

    root, scenes = _probe_scenes(split)
    return _probe_dataset(describe_rows(scenes[split], split=split), root, scenes[split])


def refcoco_source() -> str:
    """`PERPO_REFCOCO_SOURCE` (default `local`), checked.

    Raises:
        TaskDataError: For a value other than `local` or `hub`.
    """
    source = os.environ.get(ENV_REFCOCO_SOURCE, "").strip().lower() or "local"
    if source not in REFCOCO_SOURCES:
        raise TaskDataError(f"{ENV_REFCOCO_SOURCE}={source!r}; valid values: {', '.join(REFCOCO_SOURCES)}")
    return source


def load_refcoco_docs(key: str, split: str):
    """One RefCOCO-family evaluation split as a `datasets.Dataset`, from the local folder or the hub.

    Args:
        key: `refcoco`, `refcoco_plus` or `refcocog`.
        split: One of `REFCOCO_SPLITS[key]`.

    Raises:
        DataNotFoundError: (local) if `PERPO_REFCOCO_DIR` or the split file is missing.
        TaskDataError: For an unknown source.
        ValueError: For an unknown dataset or split (a task file naming one that does not exist).
    """
    if split not in REFCOCO_SPLITS.get(key, ()):
        raise ValueError(f"unknown RefCOCO split {key}/{split}; valid: {REFCOCO_SPLITS}")
    if refcoco_source() == "hub":
        return load_refcoco_hub_docs(key, split)
    prepare = f"{PREPARE_REFCOCO} (or set {ENV_REFCOCO_SOURCE}=hub to read the lmms-lab parquet copies)"
    root = env_folder(ENV_REFCOCO_DIR, prepare, "RefCOCO evaluation splits")
    rows = _read_rows(root / f"{key}_{split}.jsonl", ENV_REFCOCO_DIR, prepare)
    return _grounding_dataset(rows, root, ENV_REFCOCO_DIR)


def load_refcoco_hub_docs(key: str, split: str):
    """One split of the lmms-lab parquet copy on the hub (needs network or a filled cache), one row per expression.

    The hub "val" of RefCOCO and RefCOCOg is not the standard val (RefCOCO: 8,811 objects = 3,811 unc val + 5,000
    google val); testA/testB and RefCOCOg test match the standard splits. A warning says so.
    """
    import datasets

    repo = f"{os.environ.get(ENV_REFCOCO_HUB_ORG, '').strip() or DEFAULT_HUB_ORG}/{HUB_REPOS[key]}"
    if split == "val" and key in ("refcoco", "refcocog"):
        logger.warning(
            "%s split 'val' on the hub is not the standard %s val (it adds the google split's val objects); "
            "use PERPO_REFCOCO_SOURCE=local with `perpo data refcoco` for the standard split.",
            repo,
            REFCOCO_DATASETS[key],
        )
    table = datasets.load_dataset(repo, split=split)
    return explode_hub_rows(table, REFCOCO_DATASETS[key], split)


_COCO_ID = re.compile(r"COCO_\w+?_(\d+)")


def _image_size(image: dict) -> tuple[int, int]:
    from PIL import Image

    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with Image.open(source) as opened:  # reads the header only
        return opened.size


def explode_hub_rows(table, dataset: str, split: str):
    """The hub layout (one row per object with a list of sentences) → one document per referring expression.

    Args:
        table: A `datasets.Dataset` with columns question_id (the COCO annotation id as a string), image (an
            `Image` feature), answer (list of sentences), bbox (COCO xywh pixels), and optionally file_name.
        dataset: Refer dataset name written into each document ("refcoco", "refcoco+", "refcocog").
        split: Split name written into each document.

    Returns:
        A `datasets.Dataset` with the grounding document columns (`GROUNDING_COLUMNS`); image stays an `Image`
        feature, width/height come from the image header (the original frame).
    """
    import datasets

    table = table.cast_column("image", datasets.Image(decode=False))

    def explode(batch: dict) -> dict:
        out: dict[str, list] = {column: [] for column in GROUNDING_COLUMNS}
        for i, question_id in enumerate(batch["question_id"]):
            image = batch["image"][i]
            width, height = _image_size(image)
            file_name = (batch.get("file_name") or [None] * len(batch["question_id"]))[i] or image.get("path") or ""
            match = _COCO_ID.search(file_name)
            for j, sentence in enumerate(batch["answer"][i]):
                doc = grounding_doc(
                    {
                        "id": f"{dataset}_{split}_{question_id}_{j}",
                        "dataset": dataset,
                        "split": split,
                        "image": image,
                        "file_name": file_name,
                        "width": width,
                        "height": height,
                        "bbox": batch["bbox"][i],
                        "expression": sentence,
                        "ann_id": int(question_id),
                        "image_id": int(match.group(1)) if match else -1,
                        "sent_id": j,
                    }
                )
                for column in GROUNDING_COLUMNS:
                    out[column].append(doc[column])
        return out

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "dataset": datasets.Value("string"),
            "split": datasets.Value("string"),
            "image": datasets.Image(decode=False),
            "file_name": datasets.Value("string"),
            "width": datasets.Value("int64"),
            "height": datasets.Value("int64"),
            "bbox": datasets.Sequence(datasets.Value("float64")),
            "expression": datasets.Value("string"),
            "ref_id": datasets.Value("int64"),
            "ann_id": datasets.Value("int64"),
            "image_id": datasets.Value("int64"),
            "sent_id": datasets.Value("int64"),
            "category": datasets.Value("string"),
            "gt_padded": datasets.Sequence(datasets.Value("float64")),
            "gt_original": datasets.Sequence(datasets.Value("float64")),
        }
    )
    exploded = table.map(explode, batched=True, remove_columns=table.column_names, features=features)
    return exploded.cast_column("image", datasets.Image())


def load_fox_docs(language: str):
    """Fox page OCR (`en` or `cn`) from `$PERPO_FOX_DIR/<lang>_page_ocr.json` + `<lang>_pdf_png/`.

    The question is the benchmark's own prompt with the `<image>` placeholder removed ("OCR this image: "); the
    reference is the ground-truth page text.

    Raises:
        DataNotFoundError: If the variable, the JSON or an image is missing.
        TaskDataError: If the JSON is not the Fox list of {"image", "conversations": [prompt, answer]}.
    """
    if language not in FOX_LANGUAGES:
        raise ValueError(f"unknown Fox language {language!r}; valid: {', '.join(FOX_LANGUAGES)}")
    import datasets

    from perpo.io import read_json

    root = env_folder(ENV_FOX_DIR, PREPARE_FOX, "Fox benchmark")
    path = root / f"{language}_page_ocr.json"
    if not path.is_file():
        raise _fail(f"{path} not found ({ENV_FOX_DIR}={root}); expected the Fox layout: {PREPARE_FOX}.")
    entries = read_json(path)
    if not isinstance(entries, list):
        raise TaskDataError(f"{path}: expected a JSON list of pages")
    image_dir = root / f"{language}_pdf_png"
    docs = []
    for number, entry in enumerate(entries):
        try:
            name, (prompt, answer) = entry["image"], entry["conversations"][:2]
            question, reference = str(prompt["value"]), str(answer["value"])
        except (KeyError, TypeError, ValueError) as err:
            shape = "{'image', 'conversations': [prompt, answer]}"
            raise TaskDataError(f"{path}: entry {number} is not {shape}") from err
        question = fox_question(question)
        docs.append(
            {
                "id": f"fox_{Path(name).stem}",
                "language": language,
                "image": name,
                "file_name": name,
                "question": question,
                "reference": reference,
            }
        )
    if not docs:
        raise _fail(f"{path} lists no pages")
    images = _resolve_images([d["image"] for d in docs], image_dir, ENV_FOX_DIR)
    for doc, image in zip(docs, images, strict=True):
        doc["image"] = image
    return datasets.Dataset.from_list(docs)
