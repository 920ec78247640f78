"""Packaged recipes: training/sampling YAML files and DeepSpeed JSON configs (`perpo/configs/deepspeed/`)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent
