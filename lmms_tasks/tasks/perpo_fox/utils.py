"""Thin lmms-eval hooks of the perpo_fox* tasks: bind lmms_tasks.{data,ocr} to a language and an image mode."""

from lmms_tasks import aggregations, data, ocr
from lmms_tasks.filters import KeepAllResponses  # noqa: F401  (named by the best-of-N YAMLs' filter_list)


# process_docs: the pages from $PERPO_FOX_DIR (<lang>_page_ocr.json + <lang>_pdf_png/)
@data.ends_the_run
def fox_en(dataset):
    return data.load_fox_docs("en")


@data.ends_the_run
def fox_cn(dataset):
    return data.load_fox_docs("cn")


# doc_to_visual
def visual_page(doc):
    return ocr.doc_to_visual(doc)


def visual_none(doc):
    return ocr.doc_to_no_visual(doc)


def visual_blank(doc):
    return ocr.doc_to_blank_visual(doc)


# doc_to_text
def text_fox(doc, lmms_eval_specific_kwargs=None):
    return ocr.doc_to_text(doc, lmms_eval_specific_kwargs)


# process_results
def results_ocr(doc, results):
    return ocr.process_results(doc, results)


def results_ocr_bon(doc, results):
    return ocr.process_results_bon(doc, results)


# aggregation of the per-document record dicts
def count(items):
    return aggregations.count(items)
