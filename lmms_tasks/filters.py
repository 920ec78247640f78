"""lmms-eval filters used by the `perpo_*` tasks."""

from __future__ import annotations

from lmms_eval.api.filter import Filter


class KeepAllResponses(Filter):
    """Pass every sampled response of a document to `process_results` (best-of-N tasks).

    lmms-eval's `take_first_k` needs k fixed in the YAML and fails when `--num_samples` asks for fewer; keeping all
    responses lets the best-of-N hooks score whatever N the run used.
    """

    def apply(self, resps, docs):
        return [list(r) for r in resps]
