"""Prompts and chat formatting shared by data building, training, sampling and the lmms-eval tasks.

One place defines what the model is asked, so the prompt a model is trained on is the prompt it is sampled and
evaluated with. The chat template itself comes from the checkpoint's processor, so any LLaVA-family model
formats its own turns.
"""

from __future__ import annotations

# LLaVA-1.5's referring-expression prompt; the answer is "[x1, y1, x2, y2]" in [0, 1].
GROUNDING_QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: {expression}."
# lmms-eval's built-in refcoco_bbox_rec preamble, offered as a task variant for comparison with its numbers.
LMMS_EVAL_GROUNDING_QUESTION = (
    "Bounding box coordinates are specified in the format (top-left x, top-left y, bottom-right x, "
    "bottom-right y). All values are floating point numbers bounded between 0 and 1. Please provide the "
    "bounding box coordinate of the region this sentence describes: {expression}"
)
# Qwen2.5-VL's grounding request (its cookbook's wording): the answer is JSON with absolute pixel "bbox_2d" boxes.
QWEN_GROUNDING_QUESTION = "Locate {expression} in the image, and output its bbox coordinates in JSON format."
# Fox page OCR (the benchmark's own prompt).
OCR_QUESTION = "OCR this image: "


def fox_question(human_turn: str) -> str:
    """The question of a Fox page entry: its human turn without the `<image>` placeholder (the chat template
    places the image), or the benchmark's own prompt when nothing is left. Training, sampling and the perpo_fox
    tasks all ask exactly this."""
    return human_turn.replace("<image>", "").lstrip("\n") or OCR_QUESTION


def grounding_question(expression: str, template: str = GROUNDING_QUESTION) -> str:
    """The question for one referring expression (a trailing period in the expression is not doubled)."""
    return template.format(expression=expression.strip().rstrip("."))


def user_messages(question: str, with_image: bool = True) -> list[dict]:
    """One user turn in the transformers chat format (image first, as LLaVA-1.5 was trained)."""
    content: list[dict] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def chat_prompt(processor, question: str, with_image: bool = True) -> str:
    """The full prompt text up to where the assistant's answer starts, via the checkpoint's chat template."""
    return processor.apply_chat_template(
        user_messages(question, with_image), add_generation_prompt=True, tokenize=False
    )
