"""Qwen3-VL (`qwen3_vl`): Qwen2.5-VL's layout (flattened patches, M-RoPE, a patch merger into the language model)
with three differences that matter here:

- boxes are relative: JSON `bbox_2d` on a 0-1000 grid of the image, whatever its size, so the answer frame is a
  fixed 1000 x 1000 one, the original frame scaled;
- DeepStack: besides `visual.merger`, one merger per `deepstack_visual_indexes` entry feeds visual features into
  early language-model layers; all of them are projectors into the language model and train fully;
- 16-pixel patches (a resize grid of 32) and interleaved M-RoPE sections, both inside the model and its processor.

The shared-prefix layouts run the whole model on their rows (`model.model(...)`), so DeepStack's injection at the
image tokens happens as in a plain forward; positions come from the model's own `get_rope_index`, as for
Qwen2.5-VL.
"""

from __future__ import annotations

from dataclasses import dataclass

from perpo.model.families.base import register
from perpo.model.families.qwen2_5_vl import QwenVLFamily
from perpo.objectives.boxes import QWEN_SCALE, Box, parse_box


@dataclass(frozen=True)
class Qwen3VLFamily(QwenVLFamily):
    def answer_pixels(self, processor, width: int, height: int) -> tuple[int, int]:
        """Qwen3-VL's relative 0-1000 grid, whatever the image's size."""
        return int(QWEN_SCALE), int(QWEN_SCALE)

    def read_box(self, response: str, pixels: tuple[int, int] | None = None) -> Box | None:
        return parse_box(response, fmt="qwen")  # the 0-1000 grid, whatever the image's size

    def trained_modules(self, config) -> list[str]:
        deepstack = len(getattr(config.vision_config, "deepstack_visual_indexes", ()))
        return [self.projector, *(f"deepstack_merger_list.{i}" for i in range(deepstack))]


QWEN3_VL = register(Qwen3VLFamily("qwen3_vl", "Qwen3VLForConditionalGeneration"))
