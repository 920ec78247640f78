"""Images as a checkpoint was trained to see them: LLaVA-1.5's padded square, and the blank-image ablation.

LLaVA-1.5 was trained with `--image_aspect_ratio pad`: `expand2square` pastes the image on a square of side
max(W, H) filled with the CLIP mean colour (122, 116, 104), at the offset `perpo.objectives.boxes.padding_offsets`
gives, and boxes in the padded frame assume it. The public llava-hf checkpoints ship a `CLIPImageProcessor` that
resizes the shortest edge and centre-crops instead, so a non-square image would lose the ends of its long side. The
padding is therefore done here, before any processor, by `perpo.model.families.Family.prepare_image`, which every path
that hands an image to a model calls (sampling with either backend, the training collator, held-out scoring, GRPO, the
lmms-eval wrapper and the tasks).
"""

from __future__ import annotations

from perpo.objectives.boxes import padding_offsets

CLIP_MEAN_FILL: tuple[int, int, int] = (122, 116, 104)
"""LLaVA-1.5's padding colour: `tuple(int(x * 255) for x in CLIP image_mean)`."""


def expand2square(image, fill: tuple[int, int, int] = CLIP_MEAN_FILL):
    """Pad an RGB image to a square with `fill`, the image pasted at `perpo.objectives.boxes.padding_offsets`.

    Args:
        image: RGB PIL image of size W x H.
        fill: Padding colour.

    Returns:
        The same image when W == H, else a new max(W, H)-sided square.
    """
    from PIL import Image

    width, height = image.size
    side, dx, dy = padding_offsets(width, height)
    if width == height:
        return image
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, (dx, dy))
    return square


def blank_like(width: int, height: int, fill: tuple[int, int, int] = CLIP_MEAN_FILL):
    """A uniform `fill` image of the given size (the `blankimg` ablation: an image slot with no content)."""
    from PIL import Image

    return Image.new("RGB", (int(width), int(height)), fill)
