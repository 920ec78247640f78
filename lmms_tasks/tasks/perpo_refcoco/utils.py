"""lmms-eval hooks of the perpo_refcoco* tasks: the split loaders here, the grounding hooks re-exported.

The visual, prompt, scoring and aggregation hooks are shared with the other grounding family and live in
`lmms_tasks.grounding_hooks`; the task YAMLs name every hook as `!function utils.<name>`.
"""

from lmms_tasks import data
from lmms_tasks.filters import KeepAllResponses  # noqa: F401  (named by the best-of-N YAMLs' filter_list)
from lmms_tasks.grounding_hooks import (  # noqa: F401  (re-exported: the YAMLs name them as utils.<hook>)
    count,
    results_bon_original,
    results_bon_padded,
    results_original,
    results_padded,
    results_qwen,
    results_qwen3,
    same_value,
    text_llava15,
    text_lmms_eval,
    text_qwen,
    visual_blank,
    visual_none,
    visual_original,
    visual_padded,
    visual_qwen,
)


# process_docs: the split's rows from $PERPO_REFCOCO_DIR (or the hub with PERPO_REFCOCO_SOURCE=hub)
@data.ends_the_run
def refcoco_val(dataset):
    return data.load_refcoco_docs("refcoco", "val")


@data.ends_the_run
def refcoco_testA(dataset):  # noqa: N802 (split name)
    return data.load_refcoco_docs("refcoco", "testA")


@data.ends_the_run
def refcoco_testB(dataset):  # noqa: N802
    return data.load_refcoco_docs("refcoco", "testB")


@data.ends_the_run
def refcoco_plus_val(dataset):
    return data.load_refcoco_docs("refcoco_plus", "val")


@data.ends_the_run
def refcoco_plus_testA(dataset):  # noqa: N802
    return data.load_refcoco_docs("refcoco_plus", "testA")


@data.ends_the_run
def refcoco_plus_testB(dataset):  # noqa: N802
    return data.load_refcoco_docs("refcoco_plus", "testB")


@data.ends_the_run
def refcocog_val(dataset):
    return data.load_refcoco_docs("refcocog", "val")


@data.ends_the_run
def refcocog_test(dataset):
    return data.load_refcoco_docs("refcocog", "test")
