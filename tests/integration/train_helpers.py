"""Shared by the training tests: listwise train records built from the synthetic benchmark's train split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from perpo.io import read_jsonl, write_jsonl
from perpo.model.prompts import grounding_question
from perpo.objectives.boxes import format_box, gt_box_in_frame


def write_lists(
    synth_data: Path, out: Path, count: int, responses_for: Callable[[list[float]], tuple[list[str], list[float]]]
) -> Path:
    """`out` (train.jsonl) with one grounding list per row of the first `count` synthetic train rows.

    `responses_for(gt)` gives each list's (responses, rewards) from its exact box in the padded frame.
    """
    records = []
    for row in read_jsonl(synth_data / "synth_train.jsonl")[:count]:
        gt = gt_box_in_frame(row["bbox"], row["width"], row["height"], "padded")
        responses, rewards = responses_for(gt)
        records.append(
            {
                "id": row["id"], "task": "grounding", "image": str(synth_data / row["image"]),
                "question": grounding_question(row["expression"]), "answer": format_box(gt), "target": list(gt),
                "frame": "padded", "responses": responses, "rewards": rewards, "reward": "iou",
            }
        )  # fmt: skip
    return write_jsonl(out, records)
