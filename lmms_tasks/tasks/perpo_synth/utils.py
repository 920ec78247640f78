"""Thin lmms-eval hooks of the perpo_synth* tasks: bind lmms_tasks.{data,grounding} to a split, frame, prompt.

lmms-eval calls each hook with the document only, so every option is fixed by which function a YAML names.
"""

from lmms_tasks import aggregations, data, grounding
from lmms_tasks.filters import KeepAllResponses  # noqa: F401  (named by the best-of-N YAMLs' filter_list)


# process_docs: the split's rows from $PERPO_SYNTH_DIR (written by `perpo data synth`)
def synth_val(dataset):
    return data.load_synth_docs("val")


def synth_test(dataset):
    return data.load_synth_docs("test")


# doc_to_visual
def visual_padded(doc):
    return grounding.doc_to_visual(doc, "padded")


def visual_original(doc):
    return grounding.doc_to_visual(doc, "original")


def visual_none(doc):
    return grounding.doc_to_no_visual(doc)


def visual_blank(doc):
    return grounding.doc_to_blank_visual(doc)


# doc_to_text
def text_llava15(doc, lmms_eval_specific_kwargs=None):
    return grounding.doc_to_text(doc, lmms_eval_specific_kwargs, prompt="llava15")


def text_lmms_eval(doc, lmms_eval_specific_kwargs=None):
    return grounding.doc_to_text(doc, lmms_eval_specific_kwargs, prompt="lmms_eval")


# process_results
def results_padded(doc, results):
    return grounding.process_results(doc, results, frame="padded")


def results_original(doc, results):
    return grounding.process_results(doc, results, frame="original")


def results_bon_padded(doc, results):
    return grounding.process_results_bon(doc, results, frame="padded")


def results_bon_original(doc, results):
    return grounding.process_results_bon(doc, results, frame="original")


# aggregations of the non-numeric per-document fields (frame label, record dict)
def same_value(items):
    return aggregations.same_value(items)


def count(items):
    return aggregations.count(items)
