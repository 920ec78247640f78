"""Qwen2.5-VL (`qwen2_5_vl`): a ViT whose patch merger (`visual.merger`) feeds a Qwen2 language model.

What differs from LLaVA:
- images are flattened patches: `pixel_values` [sum of patches, D] with `image_grid_thw` [images, 3] beside it, so
  an image's rows are a slice whose length is its grid's product, and nothing is cached per list;
- positions are 3-D (M-RoPE: temporal, height, width): an image's tokens sit on their grid and the text after it
  continues from the largest position + 1. The model computes them itself from `mm_token_type_ids` for a plain
  forward; the shared-prefix layouts take each prompt's positions from the model's own `get_rope_index` and put
  a response token at depth d at `max(prompt positions) + d`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from perpo.families.base import Family, register


@dataclass(frozen=True)
class QwenVLFamily(Family):
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


QWEN2_5_VL = register(
    QwenVLFamily(
        "qwen2_5_vl",
        "Qwen2_5_VLForConditionalGeneration",
        projector="merger",
        image_inputs=("pixel_values", "image_grid_thw"),
        per_image_pixels=False,
        copies_prompt_cache=False,
    )
)
