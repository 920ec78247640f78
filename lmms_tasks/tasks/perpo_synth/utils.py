"""lmms-eval hooks of the perpo_synth* tasks: the split loaders here, the grounding hooks re-exported.

The visual, prompt, scoring and aggregation hooks are shared with the other grounding family and live in
`lmms_tasks.grounding_hooks`; the task YAMLs name every hook as `!function utils.<name>`.
"""

from lmms_tasks import data, probes
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


# process_docs: the split's rows from $PERPO_SYNTH_DIR (written by `perpo data synth`)
@data.ends_the_run
def synth_val(dataset):
    return data.load_synth_docs("val")


@data.ends_the_run
def synth_test(dataset):
    return data.load_synth_docs("test")


# The POPE and description probes of the same scenes (lmms_tasks.probes)
def visual_scene(doc):
    return probes.doc_to_visual(doc)


def text_probe(doc, lmms_eval_specific_kwargs=None):
    return probes.doc_to_text(doc, lmms_eval_specific_kwargs)


def results_pope(doc, results):
    return probes.process_pope(doc, results)


def results_describe(doc, results):
    return probes.process_describe(doc, results)


# aggregations: each metric from all the task's items (ratios of totals, not means)
def pope_accuracy(items):
    return probes.pope_metric("pope_accuracy", items)


def pope_precision(items):
    return probes.pope_metric("pope_precision", items)


def pope_recall(items):
    return probes.pope_metric("pope_recall", items)


def pope_f1(items):
    return probes.pope_metric("pope_f1", items)


def pope_yes_ratio(items):
    return probes.pope_metric("pope_yes_ratio", items)


def describe_precision(items):
    return probes.describe_metric("describe_precision", items)


def describe_recall(items):
    return probes.describe_metric("describe_recall", items)


def describe_f1(items):
    return probes.describe_metric("describe_f1", items)


def chair_i(items):
    return probes.describe_metric("chair_i", items)


def chair_s(items):
    return probes.describe_metric("chair_s", items)


# process_docs of the probes: POPE by split and way of choosing the absent objects, descriptions by split
@data.ends_the_run
def pope_val_random(dataset):
    return data.load_pope_docs("val", "random")


@data.ends_the_run
def pope_val_popular(dataset):
    return data.load_pope_docs("val", "popular")


@data.ends_the_run
def pope_val_adversarial(dataset):
    return data.load_pope_docs("val", "adversarial")


@data.ends_the_run
def pope_test_random(dataset):
    return data.load_pope_docs("test", "random")


@data.ends_the_run
def pope_test_popular(dataset):
    return data.load_pope_docs("test", "popular")


@data.ends_the_run
def pope_test_adversarial(dataset):
    return data.load_pope_docs("test", "adversarial")


@data.ends_the_run
def describe_val(dataset):
    return data.load_describe_docs("val")


@data.ends_the_run
def describe_test(dataset):
    return data.load_describe_docs("test")
