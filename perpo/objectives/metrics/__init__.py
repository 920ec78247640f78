"""Evaluation metrics; the grounding and OCR ones double as PerPO's discriminative rewards. No torch.

- `grounding`: per-sample RefCOCO metrics (`ap50`, `iou`, `parse_fail`, `acc10`..`acc90`, `center_acc`).
- `ocr`: per-page Fox metrics (`edit_dist`, `f1`, `precision`, `recall`, `bleu`, `meteor`) with the official
  definitions; nltk and jieba load lazily on first use.
- `pope`: POPE's reading of yes/no answers and its accuracy, precision, recall, F1 and yes-ratio.
- `describe`: the objects a description names, scored by object precision, recall, F1 and CHAIR.
"""

from perpo.objectives.metrics.grounding import GROUNDING_METRIC_KEYS, IOU_THRESHOLDS, box_metrics, grounding_metrics
from perpo.objectives.metrics.ocr import OCR_METRIC_KEYS, load_wordnet, normalized_edit_distance, ocr_metrics

__all__ = [
    "GROUNDING_METRIC_KEYS",
    "IOU_THRESHOLDS",
    "OCR_METRIC_KEYS",
    "box_metrics",
    "grounding_metrics",
    "load_wordnet",
    "normalized_edit_distance",
    "ocr_metrics",
]
