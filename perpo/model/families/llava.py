"""The LLaVA families: LLaVA-1.5 (`llava`), LLaVA-NeXT (`llava_next`) and LLaVA-OneVision (`llava_onevision`).

All three put a projector (`multi_modal_projector`) between a vision tower and a Llama / Vicuna / Qwen2 language
model (`model.language_model`), use 1-D positions, and are trained by the paper on normalised [0, 1] boxes in
LLaVA-1.5's padded square frame, which LLaVA-1.5 also sees its images in (`Family.prepare_image`). NeXT and
OneVision tile images into a batch-dependent number of patches, with `image_sizes` beside `pixel_values`, so their
encoded lists are not cached one by one.
"""

from __future__ import annotations

from perpo.model.families.base import Family, register

# LLaVA-1.5 was trained with `--image_aspect_ratio pad`; the llava-hf processors centre-crop (REFERENCE §9).
LLAVA = register(Family("llava", "LlavaForConditionalGeneration", pad_to_square=True))
LLAVA_NEXT = register(
    Family(
        "llava_next",
        "LlavaNextForConditionalGeneration",
        image_inputs=("pixel_values", "image_sizes"),
        per_image_pixels=False,
    )
)
LLAVA_ONEVISION = register(
    Family(
        "llava_onevision",
        "LlavaOnevisionForConditionalGeneration",
        image_inputs=("pixel_values", "image_sizes"),
        per_image_pixels=False,
    )
)
