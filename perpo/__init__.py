"""PerPO: Perceptual Preference Optimization via discriminative rewarding.

The package is import-light: submodules pull in torch/transformers only when they need them, so
`perpo.objectives` (boxes, metrics, rewards and the method registry) stays usable, and fast to import, without torch.
"""

__version__ = "0.1.0"
