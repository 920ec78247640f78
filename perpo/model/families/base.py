"""`Family`: the family-specific facts and operations, and the registry keyed by `config.model_type`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from perpo.config import ConfigError
from perpo.model.prompts import GROUNDING_QUESTION
from perpo.objectives.boxes import Box, format_box, parse_box

FAMILIES: dict[str, Family] = {}


@dataclass(frozen=True)
class Family:
    """One model family as perpo uses it.

    Attributes:
        model_type: the checkpoint's `config.model_type` (the registry key).
        model_class: the transformers `*ForConditionalGeneration` class name.
        projector: the module trained fully (a peft `modules_to_save` copy, so disabling the adapter restores it).
        language_model: the submodule path (under the model) whose linear layers get LoRA.
        image_inputs: the processor outputs that carry the images of a batch (moved to the model with the ids).
        per_image_pixels: each image is one fixed-size `pixel_values` row, whatever the batch: lists can be
            encoded once and cached (LLaVA-1.5). False when the processor pads or tiles per batch.
        copies_prompt_cache: generation may encode a prompt once and copy its KV cache to its n samples (1-D
            positions); False makes each sample a full row (positions the model derives from the whole batch).
        grounding_template: the family's referring-expression question (`{expression}` is filled in).
        default_frame: the box frame of its answers when the user names none ("padded": LLaVA-1.5's square;
            "original": the image as it is, which any resize preserves once coordinates are normalised).
        pixel_boxes: its answers are not normalised to [0, 1] but coordinates of a frame `answer_pixels` sizes:
            absolute pixels of the image its processor makes (Qwen2.5-VL), or a fixed 0-1000 grid (Qwen3-VL).
        pad_to_square: the checkpoint was trained on images padded to a square (`perpo.model.images.expand2square`),
            whatever its processor config says (LLaVA-1.5: the public llava-hf processors centre-crop instead).
    """

    model_type: str
    model_class: str
    projector: str = "multi_modal_projector"
    language_model: str = "language_model"
    image_inputs: tuple[str, ...] = ("pixel_values",)
    per_image_pixels: bool = True
    copies_prompt_cache: bool = True
    grounding_template: str = GROUNDING_QUESTION
    default_frame: str = "padded"
    pixel_boxes: bool = False
    pad_to_square: bool = False

    def prepare_image(self, image):
        """The image as this family's checkpoints were trained to see it, before the processor: every path that
        hands an image to a model calls this (sampling, training, held-out scoring, GRPO, the lmms-eval wrapper).

        Args:
            image: an RGB PIL image, or None (a prompt without an image).

        Returns:
            LLaVA-1.5 (`pad_to_square`): the image padded to its square with the CLIP mean; other families: the
            image itself, which their processors resize or tile as their checkpoints were trained.
        """
        if image is None or not self.pad_to_square:
            return image
        from perpo.model.images import expand2square

        return expand2square(image)

    def trained_modules(self, config) -> list[str]:
        """The modules trained fully beside LoRA (peft `modules_to_save`): the projector(s) into the language model."""
        return [self.projector]

    def transformers_class(self):
        import transformers

        return getattr(transformers, self.model_class)

    def lora_target_regex(self, targets: tuple[str, ...] | list[str]) -> str:
        """A peft `target_modules` regex: the named linear layers of the language model only (not the vision tower)."""
        return rf".*{self.language_model}.*\.(" + "|".join(targets) + r")$"

    def language_core(self, model) -> Any:
        """The decoder stack (embeddings, layers, final norm) of an unwrapped `*ForConditionalGeneration`."""
        return getattr(model.model, self.language_model, None)

    def select_images(self, images: dict, picks: Sequence[int]) -> dict:
        """The image inputs of images `picks` (indices in batch order), in that order: one row per image here."""
        import torch

        if not images or not picks:
            return {}
        index = torch.tensor(list(picks), device=next(iter(images.values())).device)
        return {key: value.index_select(0, index) for key, value in images.items()}

    def text_inputs(self, config, input_ids) -> dict:
        """Model inputs derived from the token ids beyond `input_ids` itself (none for 1-D position families)."""
        return {}

    def answer_pixels(self, processor, width: int, height: int) -> tuple[int, int] | None:
        """`(width, height)` of the frame the answers' numbers are in for a `width` x `height` image (`pixel_boxes`
        families); None when they are normalised to [0, 1]."""
        return None

    def write_box(self, box: Box) -> str:
        """An answer as the family writes it, for a box in its units (normalised, or pixels of `answer_pixels`)."""
        return format_box(box)

    def read_box(self, response: str, pixels: tuple[int, int] | None = None) -> Box | None:
        """The first box of an answer written the family's way, normalised to [0, 1] (None when none parses);
        `pixels`: the `answer_pixels` size a `pixel_boxes` family's numbers are in."""
        return parse_box(response)

    def images_encoded_once(self, model, n: int):
        """A context in which `generate` encodes each image once although the batch repeats it in `n` rows (the
        families that do not copy a prompt cache); nothing to do for the others."""
        from contextlib import nullcontext

        return nullcontext()

    def prompt_positions(self, model, prompt_ids: list[list[int]], has_image: list[bool], images: dict):
        """Rotary positions of each prompt when they are not 0 .. P-1 (None: 1-D positions, as in Llama / LLaVA).

        A family with multimodal positions (Qwen-VL's M-RoPE) returns one [3, P] tensor per prompt; a response
        token at depth d then sits at `max(prompt positions) + d` in all three sections.
        """
        return None


def register(family: Family) -> Family:
    """Add a family to the registry (its module calls this at import)."""
    FAMILIES[family.model_type] = family
    return family


def family_for_type(model_type: str, source: str = "model") -> Family:
    """The family of a `model_type`, or a ConfigError that lists the supported ones."""
    family = FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not a supported family ({', '.join(FAMILIES)}); adding one is "
            "one module in perpo/model/families/ (docs/architecture.md)"
        )
    return family


def unwrap(model):
    """The underlying `*ForConditionalGeneration` under DeepSpeed/DDP and peft wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def family_of(model_or_config: Any) -> Family:
    """The family of a model (peft / DeepSpeed wrappers allowed) or of its config."""
    config = getattr(unwrap(model_or_config), "config", model_or_config)
    return family_for_type(getattr(config, "model_type", None), type(model_or_config).__name__)
