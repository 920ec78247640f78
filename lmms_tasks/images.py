"""Images as the tasks hand them to a model: opened, padded to LLaVA-1.5's square, or withheld.

The padded frame is made here, in the task, not by the model's processor: `expand2square` pastes the image on a
square of side max(W, H) filled with the CLIP mean colour (122, 116, 104) at the offset `perpo.boxes` uses for the
ground truth, exactly as LLaVA-1.5 does before its vision tower. The processor then sees a square image, so its
own `do_pad` or centre crop cannot move the frame the boxes are scored in.
"""

from __future__ import annotations

from perpo.boxes import padding_offsets
from perpo.io import load_image

CLIP_MEAN_FILL: tuple[int, int, int] = (122, 116, 104)
"""LLaVA-1.5's padding colour: `tuple(int(x * 255) for x in CLIP image_mean)`."""


def open_image(image):
    """An RGB PIL image from a path string or a PIL image (hub documents embed the image)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return load_image(image)


def expand2square(image, fill: tuple[int, int, int] = CLIP_MEAN_FILL):
    """Pad an RGB image to a square with `fill`, the image pasted at `perpo.boxes.padding_offsets`.

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
