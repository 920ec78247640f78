"""Per-response summed log-probs of a batch of lists, in three layouts that give the same numbers.

A list is one prompt (image + question, P tokens after image-token expansion) with N responses. The trainer needs
`logps[b, k] = Σ_t log π(y_bkt | prompt_b, y_bk<t)` over the response tokens (the closing EOS included, as in the
released code) for the policy and the reference.

`naive` (the reference implementation): N separate sequences [prompt][response_k] per list, the model's own
forward with full-vocabulary logits everywhere, the image encoded once per sequence. This is what the released
code does, and what the tests compare against.

`shared` (the fast path): one row per list, [prompt][resp_1]…[resp_N]. Branch positions restart
after the prompt, and a 4-D mask lets each branch see the prompt and itself only, so every response token sees
exactly the context it would see alone. The image is encoded once per list, and hidden states are gathered at
the response positions before the LM head, so logits exist only where a log-prob is needed. Several lists may be
packed into one row (`pack`), each with its own positions and mask block. Works with SDPA or eager attention
(a dense additive 4-D mask) and with FlexAttention (a block-sparse `BlockMask`, for GPUs).

`tree` (the default of `perpo train`): the shared layout with the responses of a list merged into a token tree.
Responses that begin alike (sampled answers of one prompt mostly do: every box starts with the same "[", often
the same first coordinates) share their common prefix, which is computed once; identical responses cost nothing
extra. The leaves of the tree (each response's last token, EOS) are targets but not inputs: nothing is predicted
from them and nothing attends to them. The tree is laid out depth-first, so that a token's descendants are the
tokens right after it: a query sees a key of its list iff the key is in the prompt or is an ancestor of (or is)
the query, i.e. iff key <= query < end[key], with end[key] the end of the key's subtree (the end of the list for
prompt keys). Each tree token's log-prob is computed once and added to every response whose path runs through it,
so a response's sum runs over exactly its own tokens, each with exactly its own context, as in the other two
layouts.

All layouts accept `chunk_size` (rows per forward chunk, each chunk re-computed in the backward pass with
activation checkpointing), so a batch that does not fit in memory at once gives the same loss and gradients.

One module per layout (`naive.py`, `shared.py`, `tree.py`), the batch and what they share (`batch.py`), the
list-by-list attention of the tree layout (`attention.py`) and the reference memo (`memo.py`); `LAYOUTS` names
each layout's function, and `sequence_logps` calls one by name.
"""

from __future__ import annotations

from perpo.model.logprobs.attention import LISTS_ATTENTION, use_lists_attention
from perpo.model.logprobs.batch import ListBatch, language_core, pad_right
from perpo.model.logprobs.memo import ReferenceMemo
from perpo.model.logprobs.naive import naive_logps, naive_rows
from perpo.model.logprobs.shared import SharedRows, shared_block_mask, shared_logps, shared_mask, shared_rows
from perpo.model.logprobs.tree import TreeRows, response_tree, tree_block_mask, tree_logps, tree_mask, tree_rows

LAYOUTS = {"naive": naive_logps, "shared": shared_logps, "tree": tree_logps}
"""Each layout's log-prob function, by the name `perpo train --layout` takes."""

__all__ = [
    "LAYOUTS", "LISTS_ATTENTION", "ListBatch", "ReferenceMemo", "SharedRows", "TreeRows", "language_core",
    "naive_logps", "naive_rows", "pad_right", "response_tree", "sequence_logps", "shared_block_mask", "shared_logps",
    "shared_mask", "shared_rows", "tree_block_mask", "tree_logps", "tree_mask", "tree_rows", "use_lists_attention",
]  # fmt: skip


def sequence_logps(model, batch: ListBatch, *, layout: str, pad_id: int, pack: int = 1, chunk_size: int | None = None):
    """[B, N] summed log-probs and [B, N] response lengths of `batch`, computed in the layout named `layout`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(LAYOUTS)}, got {layout!r}")
    if layout == "naive":  # one sequence per response: nothing to pack
        return naive_logps(model, batch, pad_id=pad_id, chunk_size=chunk_size)
    return LAYOUTS[layout](model, batch, pad_id=pad_id, pack=pack, chunk_size=chunk_size)
