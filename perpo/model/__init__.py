"""Model code: what differs per vision-language family, and what the trainer and sampler compute with a model.

families/    one module per family (LLaVA-1.5 / NeXT / OneVision, Qwen2.5-VL, Qwen3-VL); `family_of(model)`
modeling.py  loading a checkpoint of a family, LoRA targets, dtypes
images.py    the square padding LLaVA-1.5 applies to an image
prompts.py   chat prompts and the grounding question of each answer format
memory.py    the context-length check of a prompt plus its answers
logprobs.py  per-response log-probs of a batch of lists (naive, shared-prefix and tree layouts)
generation.py  batched generation with per-row Gumbel-max sampling
quickeval.py greedy answers scored in-process (held-out AP@50 / edit distance during training)
"""
