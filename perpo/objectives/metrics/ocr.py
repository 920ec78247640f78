"""Fox page-OCR metrics with the official definitions, exact and fast. No torch.

The official script (`ucaslcl/Fox:eval_tools/eval_ocr_test.py`) scores
each page with six numbers, then averages them over pages. This module reproduces each one exactly:

- Tokens: `str.split()` (case kept, punctuation attached) unless either string contains a character in
  U+4E00-U+9FA5, in which case BOTH strings are cut with `jieba.lcut` (accurate mode; whitespace runs and
  punctuation become tokens of their own).
- `edit_dist`: character Levenshtein distance (unit costs, no transpositions, over code points) divided by
  the length of the longer string. Computed by rapidfuzz's C implementation: the same integers as
  `nltk.edit_distance`, without nltk's 2,000-character cap and about 10^4 times faster.
- `precision`, `recall`, `f1`: over the SETS of token types, as `nltk.metrics.precision/recall/f_measure`
  (`f1 = 1 / (0.5 / p + 0.5 / r)`, 0 when p or r is 0).
- `bleu`: `nltk.translate.bleu_score.sentence_bleu` with weights (0.25,)*4 and no smoothing, including its
  quirks: 0.0 with no unigram match, and an n-gram order with no match (or a hypothesis shorter than n)
  counts as precision `sys.float_info.min`, which makes the score tiny (about 1e-77 to 1e-155) but not 0.
  Re-implemented in plain Python with the same floating-point operations, so the values are identical.
- `meteor`: `nltk.translate.meteor_score.meteor_score` with its defaults (alpha 0.9, beta 3, gamma 0.5,
  lower-casing, Porter stemmer, WordNet synonyms), re-implemented with the same alignment rules (exact, then
  stem, then WordNet synonyms of the STEMMED leftovers; each hypothesis word, last to first, takes the
  latest unused reference word) and the same floating-point operations. It calls nltk's own `PorterStemmer`
  and WordNet reader, cached per word, so it is exact by construction and fast on long pages.

Argument order (`official_order`). The official script calls `cal_per_metrics(label, answer)` into a function
whose parameters are `(pred, gt)`, so it scores the ground truth as the hypothesis against the model output
as the reference. With `official_order=True` (the default, the order the Fox, GOT and PerPO numbers were made
with) this module does the same: the reported `precision` is |P ∩ G| / |G| (the true recall), `recall` is
|P ∩ G| / |P| (the true precision), and BLEU/METEOR score G against P. `official_order=False` gives the
textbook orientation (hypothesis = prediction, reference = ground truth). `edit_dist` and `f1` do not depend
on the order.

Empty-output policy (the official script crashes with a `TypeError` when a token set is empty, because nltk
returns `None`): a metric that the official definition leaves undefined is 0.0. So a prediction with no tokens
(empty, or whitespace-only under `str.split`) against a non-empty reference scores `precision = recall = f1 =
bleu = meteor = 0.0`, and `edit_dist` keeps its definition (1.0 for an empty string, the character distance
for whitespace). Under jieba whitespace is a token, so a whitespace-only prediction against a Chinese page is
scored by the plain definitions. Two empty strings are identical: `edit_dist` 0.0, token metrics 0.0 (nothing
to match). Everywhere else the values equal the official ones. No normalisation is applied to either string
(the official script has none).

Threads. lmms-eval calls `process_results` from several threads. nltk's lazy WordNet loader and the reader's
shared file handles are not thread-safe, so WordNet is loaded once under a lock (`load_wordnet`) and every
WordNet lookup runs under that lock (results are cached per word, so the lock is rarely taken). jieba is
initialised once under a lock with its loading banner silenced, and the last 256 pages it cut are cached
(best-of-N scores N outputs against one page). Importing this module imports neither nltk (about 8 s on the
project's CPU) nor jieba: they load on first use.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from itertools import pairwise
from typing import Any

from rapidfuzz.distance import Levenshtein

logger = logging.getLogger(__name__)

OCR_METRIC_KEYS: tuple[str, ...] = ("edit_dist", "f1", "precision", "recall", "bleu", "meteor")

_CJK_RE = re.compile("[\u4e00-\u9fa5]")  # the official contain_chinese_string range, U+4E00-U+9FA5

BLEU_WEIGHTS = (0.25, 0.25, 0.25, 0.25)
METEOR_ALPHA = 0.9
METEOR_BETA = 3.0
METEOR_GAMMA = 0.5
_CACHE_SIZE = 1 << 17  # distinct words kept per cache (stems, synonyms); a Fox run needs a few tens of thousands
_TOKEN_CACHE_SIZE = 256  # jieba-cut pages kept (a few MB at most)

_WORDNET_LOCK = threading.RLock()  # nltk's lazy corpus loader and the reader's file handles are not thread-safe


# --------------------------------------------------------------------------------------------------------------
# The third-party pieces, loaded once on first use (`functools.cache`; a failed load is retried on the next call)
# --------------------------------------------------------------------------------------------------------------
@cache
def load_wordnet() -> Any:
    """nltk's WordNet corpus reader, loaded once.

    Safe to call from many threads at once: the corpus loads under a lock, so one thread loads it while the
    others wait. The corpus must already be installed (`perpo setup` installs it offline on Debian, or
    `nltk.download("wordnet")`).

    Returns:
        The loaded `nltk.corpus.reader.wordnet.WordNetCorpusReader`.

    Raises:
        LookupError: If nltk cannot find the WordNet corpus, with the command that installs it.
    """
    with _WORDNET_LOCK:
        from nltk.corpus import wordnet

        try:
            wordnet.ensure_loaded()
        except LookupError as err:
            raise LookupError(
                "METEOR needs nltk's WordNet corpus, which is not installed. Run `perpo setup` (offline on "
                "Debian-like systems) or `python -c \"import nltk; nltk.download('wordnet')\"`."
            ) from err
        logger.debug("loaded WordNet %s", wordnet.get_version())
    return wordnet


@cache
def _jieba_lcut() -> Callable[[str], list[str]]:
    """jieba's `lcut`, with the dictionary loaded (jieba's `initialize` locks itself) and its banner silenced."""
    import jieba

    # jieba logs "Building prefix dict ..." at DEBUG through its own stderr handler, and sets its logger to DEBUG
    # when imported: raise the level after the import, keep its warnings.
    logging.getLogger("jieba").setLevel(logging.WARNING)
    jieba.initialize()
    return jieba.lcut


@cache
def _porter_stem() -> Callable[[str], str]:
    """nltk's default `PorterStemmer().stem` (the stemmer `meteor_score` uses)."""
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer().stem


@lru_cache(maxsize=_CACHE_SIZE)
def _stem(word: str) -> str:
    return _porter_stem()(word)


@lru_cache(maxsize=_CACHE_SIZE)
def _wordnet_synonyms(word: str) -> frozenset[str]:
    """Lemma names (without "_") of all WordNet synsets of `word`, as nltk's METEOR collects them."""
    wordnet = load_wordnet()
    with _WORDNET_LOCK:  # the reader seeks shared file handles: one lookup at a time
        synsets = wordnet.synsets(word)
        names = [lemma.name() for synset in synsets for lemma in synset.lemmas()]
    return frozenset(name for name in names if "_" not in name)


# --------------------------------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------------------------------
def contains_cjk(text: str) -> bool:
    """Whether `text` has a character in U+4E00-U+9FA5 (the official switch to jieba)."""
    return _CJK_RE.search(text) is not None


def tokenize_pair(a: str, b: str) -> tuple[list[str], list[str]]:
    """Tokenise two texts the official way: jieba for both if either has a CJK ideograph, else `str.split()`.

    Args:
        a: First text.
        b: Second text.

    Returns:
        The token lists of `a` and `b`.
    """
    if contains_cjk(a) or contains_cjk(b):
        return list(_jieba_tokens(a)), list(_jieba_tokens(b))
    return a.split(), b.split()


@lru_cache(maxsize=_TOKEN_CACHE_SIZE)
def _jieba_tokens(text: str) -> tuple[str, ...]:
    """jieba's words for `text`, cached: best-of-N evaluation scores N outputs against the same page, and
    jieba (about 5 ms per 1,000 characters) is the slowest step left on a Chinese page."""
    return tuple(_jieba_lcut()(text))


def normalized_edit_distance(a: str, b: str) -> float:
    """Character Levenshtein distance divided by `max(len(a), len(b))`; 0.0 for two empty strings.

    Args:
        a: First string.
        b: Second string.

    Returns:
        A value in [0, 1]; symmetric in its arguments.
    """
    longest = max(len(a), len(b))
    if longest == 0:
        return 0.0
    return Levenshtein.distance(a, b) / longest


def set_precision_recall_f1(
    hypothesis: Sequence[str], reference: Sequence[str]
) -> tuple[float | None, float | None, float | None]:
    """Precision, recall and F1 over token SETS, as `nltk.metrics.precision/recall/f_measure(ref, hyp)`.

    Args:
        hypothesis: Tokens of the text being scored (nltk's `test` set).
        reference: Tokens it is scored against.

    Returns:
        `(precision, recall, f1)`: precision = |H ∩ R| / |H|, recall = |H ∩ R| / |R|,
        f1 = 1 / (0.5 / p + 0.5 / r) (0 when p or r is 0). A value is `None` where nltk returns `None`
        (precision for an empty H, recall for an empty R, f1 for either).
    """
    hyp_set, ref_set = set(hypothesis), set(reference)
    common = len(hyp_set & ref_set)
    precision = common / len(hyp_set) if hyp_set else None
    recall = common / len(ref_set) if ref_set else None
    if precision is None or recall is None:
        return precision, recall, None
    if precision == 0 or recall == 0:
        return precision, recall, 0.0
    return precision, recall, 1.0 / (0.5 / precision + (1 - 0.5) / recall)


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(zip(*(tokens[i:] for i in range(n)), strict=False)) if len(tokens) >= n else Counter()


def sentence_bleu(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """BLEU-4 of one hypothesis against one reference, identical to nltk's `sentence_bleu([ref], hyp)`.

    Modified n-gram precision p_n = clipped matches / max(1, number of hypothesis n-grams) for n = 1..4;
    0.0 when there is no unigram match; a p_n with no match becomes `sys.float_info.min` (nltk's `method0`);
    brevity penalty BP = 1 if |hyp| > |ref| else exp(1 - |ref| / |hyp|);
    BLEU = BP * exp(fsum(0.25 * log(p_n))).

    Args:
        hypothesis: Tokens of the scored text.
        reference: Tokens of the reference.

    Returns:
        The score in [0, 1].
    """
    hyp_len, ref_len = len(hypothesis), len(reference)
    precisions: list[float] = []
    for n in range(1, len(BLEU_WEIGHTS) + 1):
        hyp_counts = _ngram_counts(hypothesis, n)
        ref_counts = _ngram_counts(reference, n)
        matches = sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items() if gram in ref_counts)
        if n == 1 and matches == 0:
            return 0.0
        total = max(1, sum(hyp_counts.values()))
        precisions.append(matches / total if matches else sys.float_info.min)
    if hyp_len > ref_len:
        brevity_penalty = 1.0
    else:
        brevity_penalty = math.exp(1 - ref_len / hyp_len)
    return brevity_penalty * math.exp(
        math.fsum(w * math.log(p) for w, p in zip(BLEU_WEIGHTS, precisions, strict=True))
    )


def _match_by_key(
    hyp: list[tuple[int, str]], ref: list[tuple[int, str]], matches: list[tuple[int, int]]
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """One METEOR alignment stage on equal keys: each hypothesis word, from the last to the first, takes the
    unused reference word with the same key at the highest position. Appends (hyp_idx, ref_idx) to `matches`
    and returns the unmatched words of both sides (in their original order)."""
    positions: dict[str, list[int]] = {}
    for slot, (_, word) in enumerate(ref):
        positions.setdefault(word, []).append(slot)
    used_ref: set[int] = set()
    used_hyp: set[int] = set()
    for slot in range(len(hyp) - 1, -1, -1):
        candidates = positions.get(hyp[slot][1])
        if candidates:
            ref_slot = candidates.pop()
            used_hyp.add(slot)
            used_ref.add(ref_slot)
            matches.append((hyp[slot][0], ref[ref_slot][0]))
    return (
        [item for slot, item in enumerate(hyp) if slot not in used_hyp],
        [item for slot, item in enumerate(ref) if slot not in used_ref],
    )


def _match_synonyms(hyp: list[tuple[int, str]], ref: list[tuple[int, str]], matches: list[tuple[int, int]]) -> None:
    """The WordNet stage: like `_match_by_key`, but a hypothesis word may take any unused reference word that
    is itself or one of its WordNet lemma names, choosing the one at the highest position."""
    positions: dict[str, list[int]] = {}
    for slot, (_, word) in enumerate(ref):
        positions.setdefault(word, []).append(slot)
    for slot in range(len(hyp) - 1, -1, -1):
        word = hyp[slot][1]
        best_slot, best_word = -1, None
        for candidate in _wordnet_synonyms(word) | {word}:
            candidates = positions.get(candidate)
            if candidates and candidates[-1] > best_slot:
                best_slot, best_word = candidates[-1], candidate
        if best_word is not None:
            positions[best_word].pop()
            matches.append((hyp[slot][0], ref[best_slot][0]))


def meteor(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """METEOR of one hypothesis against one reference, identical to nltk's `meteor_score([ref], hyp)`.

    Words are lower-cased, then aligned in three stages (exact, Porter stem, WordNet synonym of the stem).
    With m matches, c chunks (runs adjacent in both texts), P = m / |hyp|, R = m / |ref|:
    score = (1 - 0.5 (c / m)^3) * P R / (0.9 P + 0.1 R), and 0.0 when there is no match.

    Args:
        hypothesis: Tokens of the scored text.
        reference: Tokens of the reference.

    Returns:
        The score in [0, 1) (identical texts of n words score 1 - 0.5 / n^3).

    Raises:
        LookupError: If the WordNet corpus is not installed.
    """
    hyp = list(enumerate(word.lower() for word in hypothesis))
    ref = list(enumerate(word.lower() for word in reference))
    if not hyp or not ref:
        return 0.0
    matches: list[tuple[int, int]] = []
    hyp, ref = _match_by_key(hyp, ref, matches)
    if hyp and ref:
        hyp = [(i, _stem(word)) for i, word in hyp]
        ref = [(j, _stem(word)) for j, word in ref]
        hyp, ref = _match_by_key(hyp, ref, matches)
    if hyp and ref:
        _match_synonyms(hyp, ref, matches)
    if not matches:
        return 0.0
    matches.sort()
    chunks = 1 + sum(1 for (h0, r0), (h1, r1) in pairwise(matches) if not (h1 == h0 + 1 and r1 == r0 + 1))
    precision = float(len(matches)) / len(hypothesis)
    recall = float(len(matches)) / len(reference)
    fmean = (precision * recall) / (METEOR_ALPHA * precision + (1 - METEOR_ALPHA) * recall)
    fragmentation = float(chunks) / len(matches)
    penalty = METEOR_GAMMA * fragmentation**METEOR_BETA
    return (1 - penalty) * fmean


def ocr_metrics(prediction: str, reference: str, *, official_order: bool = True) -> dict[str, float]:
    """Score one page of OCR output with the official Fox metrics.

    Args:
        prediction: The model's output for the page.
        reference: The ground-truth page text.
        official_order: True (default) reproduces the official script's swapped arguments (the order the
            published numbers use); False gives the textbook orientation. See the module docstring.

    Returns:
        `{"edit_dist", "f1", "precision", "recall", "bleu", "meteor"}` as floats in [0, 1]. Undefined values
        (an empty token set) are 0.0; see the empty-output policy in the module docstring.

    Raises:
        TypeError: If an argument is not a `str`.
        LookupError: If METEOR needs WordNet and the corpus is not installed.
    """
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise TypeError(f"ocr_metrics expects two str, got {type(prediction).__name__} and {type(reference).__name__}")
    pred_tokens, ref_tokens = tokenize_pair(prediction, reference)
    if official_order:
        hyp_tokens, ref_tokens = ref_tokens, pred_tokens
    else:
        hyp_tokens = pred_tokens
    precision, recall, f1 = set_precision_recall_f1(hyp_tokens, ref_tokens)
    return {
        "edit_dist": normalized_edit_distance(prediction, reference),
        "f1": f1 or 0.0,
        "precision": precision or 0.0,
        "recall": recall or 0.0,
        "bleu": sentence_bleu(hyp_tokens, ref_tokens),
        "meteor": meteor(hyp_tokens, ref_tokens),
    }
