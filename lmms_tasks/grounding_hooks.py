"""lmms-eval hooks shared by every grounding task family (perpo_refcoco*, perpo_synth*).

Each family's `tasks/<family>/utils.py` re-exports these, because a task YAML names its hooks as
`!function utils.<name>` relative to its own folder. lmms-eval calls each hook with the document only, so every
option (frame, prompt) is fixed by which function a YAML names.
"""

from lmms_tasks import aggregations, grounding


# doc_to_visual
def visual_padded(doc):
    return grounding.doc_to_visual(doc, "padded")


def visual_original(doc):
    return grounding.doc_to_visual(doc, "original")


def visual_qwen(doc):
    return grounding.doc_to_qwen_visual(doc)


def visual_none(doc):
    return grounding.doc_to_no_visual(doc)


def visual_blank(doc):
    return grounding.doc_to_blank_visual(doc)


# doc_to_text
def text_llava15(doc, lmms_eval_specific_kwargs=None):
    return grounding.doc_to_text(doc, lmms_eval_specific_kwargs, prompt="llava15")


def text_lmms_eval(doc, lmms_eval_specific_kwargs=None):
    return grounding.doc_to_text(doc, lmms_eval_specific_kwargs, prompt="lmms_eval")


def text_qwen(doc, lmms_eval_specific_kwargs=None):
    return grounding.doc_to_text(doc, lmms_eval_specific_kwargs, prompt="qwen")


# process_results
def results_padded(doc, results):
    return grounding.process_results(doc, results, frame="padded")


def results_original(doc, results):
    return grounding.process_results(doc, results, frame="original")


def results_qwen(doc, results):
    return grounding.process_results(doc, results, frame="original", boxes="qwen_pixels")


def results_qwen3(doc, results):
    return grounding.process_results(doc, results, frame="original", boxes="qwen_relative")


def results_bon_padded(doc, results):
    return grounding.process_results_bon(doc, results, frame="padded")


def results_bon_original(doc, results):
    return grounding.process_results_bon(doc, results, frame="original")


# aggregations of the non-numeric per-document fields (frame label, record dict)
def same_value(items):
    return aggregations.same_value(items)


def count(items):
    return aggregations.count(items)
