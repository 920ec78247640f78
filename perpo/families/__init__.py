"""Model families: everything that differs between vision-language model families, in one module per family.

A family (`Family`) owns what the rest of perpo must not guess: the transformers model class, the multimodal
projector that trains fully, the language-model layers that get LoRA, which processor outputs carry an image and
whether they can be cached per list, how the shared-prefix forward reaches the language model core and the LM
head, and the box convention and grounding prompt of its answers. Sampling, collation, log-probs, the trainer and
the lmms-eval wrapper ask the family of the checkpoint (`family_of`) instead of testing model types.

Adding a family is one module here that defines a `Family` and registers it (see `llava.py`), plus its test.
"""

from __future__ import annotations

from perpo.families.base import FAMILIES, Family, family_for_type, family_of, register
from perpo.families.llava import LLAVA, LLAVA_NEXT, LLAVA_ONEVISION

__all__ = ["FAMILIES", "LLAVA", "LLAVA_NEXT", "LLAVA_ONEVISION", "Family", "family_for_type", "family_of", "register"]
