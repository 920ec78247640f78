"""lmms-eval hooks of the perpo_synth* tasks: the split loaders here, the grounding hooks re-exported.

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


# process_docs: the split's rows from $PERPO_SYNTH_DIR (written by `perpo data synth`)
@data.ends_the_run
def synth_val(dataset):
    return data.load_synth_docs("val")


@data.ends_the_run
def synth_test(dataset):
    return data.load_synth_docs("test")
