"""Qwen2.5-VL (`qwen2_5_vl`): a ViT whose patch merger (`visual.merger`) feeds a Qwen2 language model.

What differs from LLaVA:
- images are flattened patches: `pixel_values` [sum of patches, D] with `image_grid_thw` [images, 3] beside it, so
  an image's rows are a slice whose length is its grid's product, and nothing is cached per list;
- boxes are absolute pixel coordinates of the image the processor resized (`smart_resize`: each side a multiple
  of patch x merge, the area within the processor's min/max pixels), written as JSON `[{"bbox_2d": [x1, y1, x2,
  y2]}]`. Normalised by that size they are boxes in the original frame (a resize keeps relative positions);
- positions are 3-D (M-RoPE: temporal, height, width): an image's tokens sit on their grid and the text after it
  continues from the largest position + 1. The model computes them itself from `mm_token_type_ids` for a plain
  forward; the shared-prefix layouts take each prompt's positions from the model's own `get_rope_index` and put
  a response token at depth d at `max(prompt positions) + d`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from perpo.model.families.base import Family, register, unwrap
from perpo.model.prompts import QWEN_GROUNDING_QUESTION
from perpo.objectives.boxes import Box, parse_box

QWEN_FACTOR = 28
"""Qwen2.5-VL's resize grid: 14-pixel patches, merged 2 x 2."""


def resized_size(
    width: int, height: int, *, factor: int = QWEN_FACTOR, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """`(width, height)` of the image a Qwen-VL processor makes from a `width` x `height` one: transformers' own
    `smart_resize` (each side a multiple of `factor`, the area within [min_pixels, max_pixels])."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    resized_height, resized_width = smart_resize(
        height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return resized_width, resized_height


@dataclass(frozen=True)
class QwenVLFamily(Family):
    """The Qwen-VL families: what they share is the default here."""

    projector: str = "merger"
    image_inputs: tuple[str, ...] = ("pixel_values", "image_grid_thw")
    per_image_pixels: bool = False
    copies_prompt_cache: bool = False
    grounding_template: str = QWEN_GROUNDING_QUESTION
    default_frame: str = "original"
    pixel_boxes: bool = True

    def select_images(self, images: dict, picks: Sequence[int]) -> dict:
        import torch

        if not images or not picks:
            return {}
        grid = images["image_grid_thw"]
        sizes = grid.prod(-1).tolist()
        starts = [0]
        for size in sizes:
            starts.append(starts[-1] + size)
        pixels = images["pixel_values"]
        index = torch.tensor(list(picks), device=grid.device)
        return {
            "pixel_values": torch.cat([pixels[starts[i] : starts[i] + sizes[i]] for i in picks]),
            "image_grid_thw": grid.index_select(0, index),
        }

    @contextmanager
    def images_encoded_once(self, model, n: int):
        """Inside, the vision tower encodes each image once when the batch holds it `n` times in a row (the rows
        of one instruction's n samples, which M-RoPE keeps from sharing one cached prompt) and repeats what it
        computed, every output of it (merged tokens, DeepStack features), for the other copies. The images of a
        batch are encoded independently of each other, so the result is the same."""
        import torch

        visual = unwrap(model).model.visual
        encode = visual.forward
        merge = visual.spatial_merge_size**2

        def once(hidden_states, grid_thw, **kwargs):
            if n == 1 or len(grid_thw) % n or not torch.equal(grid_thw[::n].repeat_interleave(n, 0), grid_thw):
                return encode(hidden_states, grid_thw=grid_thw, **kwargs)
            patches = grid_thw.prod(-1).tolist()
            blocks = torch.split(hidden_states, patches)
            out = encode(torch.cat(blocks[::n]), grid_thw=grid_thw[::n], **kwargs)
            sizes = [patches[::n], [p // merge for p in patches[::n]]]  # rows per image before / after merging

            def repeat(value):
                for rows in sizes:
                    if torch.is_tensor(value) and value.shape[0] == sum(rows):
                        return torch.cat([b for b in torch.split(value, rows) for _ in range(n)])
                return [repeat(v) for v in value] if isinstance(value, (list, tuple)) else value

            for key in list(out.keys()):
                out[key] = repeat(out[key])
            return out

        visual.forward = once
        try:
            yield
        finally:
            del visual.forward  # the class's own forward again

    def answer_pixels(self, processor, width: int, height: int) -> tuple[int, int]:
        """The size the processor resizes a `width` x `height` image to (`resized_size` with the processor's patch
        size x merge size and its min / max pixels)."""
        images = processor.image_processor
        return resized_size(
            width,
            height,
            factor=images.patch_size * images.merge_size,
            min_pixels=images.size["shortest_edge"],
            max_pixels=images.size["longest_edge"],
        )

    def write_box(self, box: Box) -> str:
        return json.dumps([{"bbox_2d": [round(v) for v in box]}])

    def read_box(self, response: str, pixels: tuple[int, int] | None = None) -> Box | None:
        return parse_box(response, fmt="pixel", size=pixels)

    def text_inputs(self, config, input_ids) -> dict:
        return {"mm_token_type_ids": (input_ids == config.image_token_id).int()}

    def prompt_positions(self, model, prompt_ids: list[list[int]], has_image: list[bool], images: dict):
        import torch

        out, image = [], 0
        for prompt, with_image in zip(prompt_ids, has_image, strict=True):
            ids = torch.tensor([prompt], device=model.device)
            if not with_image:
                out.append(torch.arange(len(prompt)).expand(3, -1))
                continue
            grid = images["image_grid_thw"][image : image + 1].to(model.device)
            image += 1
            positions, _ = model.model.get_rope_index(
                ids, mm_token_type_ids=self.text_inputs(model.config, ids)["mm_token_type_ids"], image_grid_thw=grid
            )
            out.append(positions[:, 0].cpu())  # [3, P]
        return out


QWEN2_5_VL = register(QwenVLFamily("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"))
