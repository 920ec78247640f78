"""Images as the tasks hand them to a model: opened, padded to LLaVA-1.5's square, or withheld.

The padded frame is made here, in the task, and again by the model's family before its processor
(`perpo.model.families.Family.prepare_image`, which pads LLaVA-1.5's images whatever the processor config says): both
use `perpo.model.images.expand2square`, the CLIP-mean fill at the offset `perpo.objectives.boxes` uses for the ground
truth, so neither the processor's `do_pad` nor its centre crop can move the frame the boxes are scored in.
"""

from __future__ import annotations

from perpo.io import load_image
from perpo.model.images import CLIP_MEAN_FILL, blank_like, expand2square

__all__ = ["CLIP_MEAN_FILL", "blank_like", "expand2square", "open_image"]


def open_image(image):
    """An RGB PIL image from a path string or a PIL image (hub documents embed the image)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return load_image(image)
