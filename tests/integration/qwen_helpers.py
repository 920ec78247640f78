"""A tiny Qwen2.5-VL that knows the answers: the random test-size model taught, in a few seconds, to answer the
`_qwen` grounding tasks' questions on the refer fixture with their exact boxes in Qwen's format (JSON `bbox_2d`,
pixels of the image the task hands over). An evaluation that reads those answers in the wrong frame fails."""

from __future__ import annotations

import os
from pathlib import Path

from perpo.embedded.tiny import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

# The tiny Qwen's own image bounds (perpo.embedded.tiny): the model, its processor and the tasks agree on them.
QWEN_ENV = {"PERPO_QWEN_MIN_PIXELS": str(QWEN_MIN_PIXELS), "PERPO_QWEN_MAX_PIXELS": str(QWEN_MAX_PIXELS)}


def qwen_task_docs(refcoco_dir: Path, splits: list[tuple[str, str]]) -> list[dict]:
    """The documents of `perpo_<dataset>_<split>_qwen` for each (dataset, split), as the tasks load them."""
    import pytest

    from lmms_tasks import data

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERPO_REFCOCO_DIR", str(refcoco_dir))
        return [doc for dataset, split in splits for doc in data.load_refcoco_docs(dataset, split)]


def teach_answers(model_dir: Path, docs: list[dict], out: Path, *, max_steps: int = 300) -> Path:
    """Fine-tune every weight on the documents' (image, question, exact answer) until the loss is below 1e-2."""
    import pytest
    import torch

    from lmms_tasks import grounding
    from perpo.model.families import QWEN2_5_VL
    from perpo.model.modeling import load_model, load_processor
    from perpo.model.prompts import chat_prompt
    from perpo.objectives.boxes import denormalize_box

    model = load_model(model_dir, dtype="float32", device="cpu")
    processor = load_processor(model_dir)
    tokenizer = processor.tokenizer
    with pytest.MonkeyPatch.context() as patch:
        for key, value in QWEN_ENV.items():
            patch.setenv(key, value)
        images = [grounding.doc_to_qwen_visual(doc)[0] for doc in docs]
        boxes = [denormalize_box(grounding.gt_box(doc, "original"), *grounding.qwen_pixels(doc)) for doc in docs]
    prompts = [chat_prompt(processor, grounding.doc_to_text(doc, prompt="qwen")) for doc in docs]
    answers = [QWEN2_5_VL.write_box(box) + tokenizer.eos_token for box in boxes]
    texts = [prompt + answer for prompt, answer in zip(prompts, answers, strict=True)]
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = inputs["input_ids"].clone()
    for row, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        answer = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - len(
            tokenizer(prompt, add_special_tokens=False)["input_ids"]
        )
        labels[row, : labels.shape[1] - answer] = -100  # padding is on the left: the answer ends each row
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(max_steps):
        loss = model(**inputs, labels=labels).loss
        if loss.item() < 1e-2:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-2, f"the tiny Qwen did not learn its answers (loss {loss.item():.4f})"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    assert os.path.isfile(out / "config.json")
    return out
