"""What PerPO optimises and measures, free of models: boxes and their frames, the metrics, the discriminative
rewards built on them, and the losses with their method registry. Nothing here imports torch at import time.

    boxes.py     box parsing, formatting and IoU in a record's frame (padded square, resized, pixels)
    metrics/     RefCOCO and Fox metrics, exact to the official definitions
    rewards.py   the discriminative rewards (IoU, 1 - edit distance), user rewards by dotted path, the margin filter
    losses.py    SFT, DPO, LiPO, PerPO and the rest, and `METHODS`: one record per method for every consumer
"""
