"""Model families: everything that differs between vision-language model families, in one module per family.

A family (`Family`) owns what the rest of perpo must not guess: the transformers model class, the multimodal
projector that trains fully, the language-model layers that get LoRA, which processor outputs carry an image and
whether they can be cached per list, how images are selected per list, and the positions of a prompt when they are
not 1-D. Sampling, collation, log-probs, the trainer and the lmms-eval wrapper ask the family of the checkpoint
(`family_of`) instead of testing model types.

Adding a family is one module here that defines a `Family` (or a subclass, as `qwen2_5_vl.py`) and registers it,
plus a tiny model of it in `perpo/embedded/tiny.py` that the family-parametrised tests run on.
"""

from __future__ import annotations

from perpo.model.families.base import FAMILIES, Family, family_for_type, family_of, register
from perpo.model.families.llava import LLAVA, LLAVA_NEXT, LLAVA_ONEVISION
from perpo.model.families.qwen2_5_vl import QWEN2_5_VL
from perpo.model.families.qwen3_vl import QWEN3_VL

__all__ = [
    "FAMILIES", "LLAVA", "LLAVA_NEXT", "LLAVA_ONEVISION", "QWEN2_5_VL", "QWEN3_VL", "Family", "family_for_type",
    "family_of", "register",
]  # fmt: skip
