"""Training recipes on top of the model code and the losses.

trainer.py    `perpo train`: `PerPOArguments`, the listwise `PerPOTrainer`, the reference cache and resume
heldout.py    held-out scoring during training (the callback and its rows)
grpo.py       `perpo grpo`: TRL's GRPO on the same instructions and rewards, for comparison
iterative.py  `perpo iterate`: rounds of sample → build-data → train
"""
