"""Benchmark: PerPO's Fox page-OCR metrics against a plain nltk implementation of the same definitions.

Scores 212 synthetic pages (112 English, 100 Chinese, like Fox's page-OCR split) of 1,000-4,000 characters with
OCR-style errors in the predictions, with `perpo.objectives.metrics.ocr.ocr_metrics` (official argument order) and with
a plain transcription of the official `cal_per_metrics` on nltk. nltk's pure-Python edit distance needs seconds
per page, so the nltk side runs on a sample of pages (both implementations are timed on the same pages), and
nltk's 2,000-character cap on `edit_distance` (`nltk.metrics.distance.MAX_DISTANCE_INPUT_LEN`) is lifted for
it. Prints the machine, medians over repeats, a per-metric breakdown, the agreement of the two
implementations and the speed ratio.

Usage:
    .venv/bin/python benchmarks/metrics_bench.py [--sample 4] [--repeats 5] [--nltk-repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import random
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version

from perpo.config import cpu_model
from perpo.objectives.metrics import ocr

# ----------------------------------------------------------------------------------------------------------------
# Synthetic pages
# ----------------------------------------------------------------------------------------------------------------
EN_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no what can more out other into "
    "some could them time these two may first then do any like my now over such our man me even most made "
    "after also did many before must through back years where much your way well down should because each "
    "just those people how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off come since "
    "against go came right used take three model page image text table figure results training data method "
    "errors reading layout column paragraph number units accuracy baseline evaluation section report value "
    "study system language vision document printed scanned transcription distance score metric sample list "
    "sofa car big begin buy quick error picture house road small start purchase fast mistake photograph"
).split()
EN_SYNONYMS = {
    "sofa": "couch",
    "car": "automobile",
    "big": "large",
    "begin": "start",
    "buy": "purchase",
    "quick": "fast",
    "error": "mistake",
    "picture": "photograph",
}
ZH_WORDS = (
    "我们 研究 模型 图像 文字 识别 方法 数据 结果 实验 训练 评估 页面 表格 文档 系统 视觉 语言 问题 分析 提出 "
    "使用 进行 通过 可以 一个 这个 没有 已经 非常 重要 能够 需要 其中 以及 因此 但是 如果 所以 然后 今天 学生 "
    "老师 学校 图书馆 城市 发展 经济 社会 文化 历史 科学 技术 的 了 在 是 和 与 对 中 上 下 年 月 日 第 章 节"
).split()
ZH_CHARS = "".join(sorted(set("".join(ZH_WORDS))))
EN_CHARS = "abcdefghijklmnopqrstuvwxyz"


def _english_page(rng: random.Random, target: int) -> str:
    lines, line, total = [], [], 0
    while total < target:
        sentence = [rng.choice(EN_WORDS) for _ in range(rng.randint(6, 18))]
        sentence[0] = sentence[0].capitalize()
        if rng.random() < 0.3:
            sentence.insert(rng.randrange(len(sentence)), f"{rng.randint(1, 999)}.{rng.randint(0, 9)}")
        for word in [*sentence[:-1], sentence[-1] + rng.choice(".....;:?")]:
            line.append(word)
            total += len(word) + 1
            if sum(len(w) + 1 for w in line) > 80:
                lines.append(" ".join(line))
                line = []
        if rng.random() < 0.15:
            lines.append(" ".join(line))
            lines.append("")
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines).strip()[:target]


def _chinese_page(rng: random.Random, target: int) -> str:
    parts, total = [], 0
    while total < target:
        words = [rng.choice(ZH_WORDS) for _ in range(rng.randint(6, 16))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), rng.choice(["LLaVA", "2024", "3.5%", "OCR", "PerPO"]))
        cut = rng.randrange(2, len(words))
        sentence = "".join(words[:cut]) + "，" + "".join(words[cut:]) + "。"
        if rng.random() < 0.1:
            sentence += "\n"
        parts.append(sentence)
        total += len(sentence)
    return "".join(parts)[:target]


def _ocr_noise(rng: random.Random, text: str, chars: str, english: bool) -> str:
    """Line drops and repeats, synonym swaps, and character substitutions, deletions and insertions."""
    lines = []
    for line in text.split("\n"):
        if rng.random() < 0.03:
            continue
        if english:
            line = " ".join(EN_SYNONYMS.get(w, w) if rng.random() < 0.5 else w for w in line.split(" "))
        lines.append(line)
        if rng.random() < 0.02:
            lines.append(line)
    out = []
    for char in "\n".join(lines):
        roll = rng.random()
        if roll < 0.01:
            out.append(rng.choice(chars))
        elif roll < 0.015:
            continue
        else:
            out.append(char)
            if roll > 0.995:
                out.append(rng.choice(chars))
    return "".join(out)


def make_pages(seed: int, n_en: int = 112, n_zh: int = 100) -> list[tuple[str, str, str]]:
    """(language, prediction, reference) for n_en English and n_zh Chinese pages of 1,000-4,000 characters."""
    rng = random.Random(seed)
    pages = []
    for i in range(n_en + n_zh):
        english = i < n_en
        target = rng.randint(1000, 4000)
        reference = _english_page(rng, target) if english else _chinese_page(rng, target)
        prediction = _ocr_noise(rng, reference, EN_CHARS if english else ZH_CHARS, english)
        pages.append(("en" if english else "zh", prediction, reference))
    return pages


# ----------------------------------------------------------------------------------------------------------------
# The plain nltk implementation (a transcription of the official cal_per_metrics, timed per stage)
# ----------------------------------------------------------------------------------------------------------------
def nltk_page_metrics(prediction: str, reference: str) -> tuple[dict[str, float], dict[str, float]]:
    """Official order: the script calls cal_per_metrics(pred=label, gt=answer). Returns (metrics, seconds)."""
    import jieba
    import nltk
    from nltk.metrics import f_measure, precision, recall
    from nltk.translate import meteor_score

    pred, gt = reference, prediction
    times: dict[str, float] = {}
    start = time.perf_counter()
    if re.search(r"[\u4e00-\u9fa5]", gt) or re.search(r"[\u4e00-\u9fa5]", pred):
        ref_tokens, hyp_tokens = jieba.lcut(gt), jieba.lcut(pred)
    else:
        ref_tokens, hyp_tokens = gt.split(), pred.split()
    times["tokenise"] = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bleu = nltk.translate.bleu([ref_tokens], hyp_tokens)
    times["bleu"] = time.perf_counter() - start
    start = time.perf_counter()
    meteor = meteor_score.meteor_score([ref_tokens], hyp_tokens)
    times["meteor"] = time.perf_counter() - start
    start = time.perf_counter()
    ref_set, hyp_set = set(ref_tokens), set(hyp_tokens)
    values = {
        "f1": f_measure(ref_set, hyp_set),
        "precision": precision(ref_set, hyp_set),
        "recall": recall(ref_set, hyp_set),
    }
    times["p/r/f1"] = time.perf_counter() - start
    start = time.perf_counter()
    edit_dist = nltk.edit_distance(pred, gt) / max(len(pred), len(gt))
    times["edit distance"] = time.perf_counter() - start
    return {"edit_dist": edit_dist, **values, "bleu": bleu, "meteor": meteor}, times


def project_page_breakdown(prediction: str, reference: str) -> dict[str, float]:
    """Seconds per stage of perpo's implementation (same stages as `ocr_metrics`, official order)."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    pred_tokens, ref_tokens = ocr.tokenize_pair(prediction, reference)
    times["tokenise"] = time.perf_counter() - start
    hyp, ref = ref_tokens, pred_tokens
    for name, fn in (
        ("bleu", lambda: ocr.sentence_bleu(hyp, ref)),
        ("meteor", lambda: ocr.meteor(hyp, ref)),
        ("p/r/f1", lambda: ocr.set_precision_recall_f1(hyp, ref)),
        ("edit distance", lambda: ocr.normalized_edit_distance(prediction, reference)),
    ):
        start = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - start
    return times


def pick_sample(pages: list[tuple[str, str, str]], size: int) -> list[int]:
    """Indices of `size` pages, half English and half Chinese, at evenly spaced length quantiles."""
    picked = []
    for lang, count in (("en", size - size // 2), ("zh", size // 2)):
        group = sorted((i for i, page in enumerate(pages) if page[0] == lang), key=lambda i: len(pages[i][2]))
        picked += [group[int((k + 0.5) * len(group) / count)] for k in range(count)]
    return picked


def clear_word_caches() -> None:
    """Forget the stem, synonym and jieba caches, so a call pays what a first call on new text pays."""
    ocr._stem.cache_clear()
    ocr._wordnet_synonyms.cache_clear()
    ocr._jieba_tokens.cache_clear()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def machine_description() -> str:
    cpu = cpu_model()
    load = ""
    if hasattr(os, "getloadavg"):  # Unix only; the machine may be shared, so the load matters
        load = ", load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{platform.platform()}; {cpu}; {os.cpu_count()} logical CPUs{load}; "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=4, help="pages scored by both implementations (half en/zh)")
    parser.add_argument("--repeats", type=int, default=5, help="passes of the project's implementation")
    parser.add_argument("--nltk-repeats", type=int, default=3, help="repeats per sample page (both implementations)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pages = make_pages(args.seed)
    lengths = sorted(len(reference) for _, _, reference in pages)
    print("PerPO Fox OCR metrics benchmark (official argument order)")
    print(f"machine : {machine_description()}")

    # One-time loads, outside every timing: nltk import, WordNet, jieba's dictionary.
    start = time.perf_counter()
    wordnet = ocr.load_wordnet()
    ocr.tokenize_pair("预热", "")
    ocr._stem("warming")
    import nltk

    distance = importlib.import_module("nltk.metrics.distance")
    old_cap = distance.MAX_DISTANCE_INPUT_LEN
    distance.MAX_DISTANCE_INPUT_LEN = sys.maxsize
    print(
        f"versions: nltk {nltk.__version__}, rapidfuzz {version('rapidfuzz')}, jieba {version('jieba')}, "
        f"WordNet {wordnet.get_version()}; one-time loads (nltk import, WordNet, jieba) took "
        f"{time.perf_counter() - start:.1f} s and are excluded below"
    )
    print(
        f"pages   : {len(pages)} synthetic (112 en, 100 zh), reference length {lengths[0]}-{lengths[-1]} chars "
        f"(median {statistics.median(lengths):.0f}); predictions with OCR-style noise"
    )
    print(
        f"nltk    : plain transcription of the official cal_per_metrics; nltk.edit_distance's cap "
        f"MAX_DISTANCE_INPUT_LEN raised from {old_cap} to sys.maxsize; run on a sample of {args.sample} pages "
        "(it needs seconds per page)"
    )

    # 1. The project's implementation on every page.
    clear_word_caches()
    first_pass = timed(lambda: [ocr.ocr_metrics(p, r) for _, p, r in pages])
    warm_passes = [timed(lambda: [ocr.ocr_metrics(p, r) for _, p, r in pages]) for _ in range(args.repeats)]
    cold_passes = []
    for _ in range(args.repeats):
        clear_word_caches()
        cold_passes.append(timed(lambda: [ocr.ocr_metrics(p, r) for _, p, r in pages]))
    project_all = statistics.median(cold_passes)
    print(f"\n[project, all {len(pages)} pages] median of {args.repeats} passes:")
    print(
        f"  empty word caches per pass: {project_all:.2f} s ({1000 * project_all / len(pages):.1f} ms/page); "
        f"warm caches: {statistics.median(warm_passes):.2f} s; very first pass: {first_pass:.2f} s"
    )

    # 2. Both implementations on the same sample pages.
    sample = pick_sample(pages, args.sample)
    print(f"\n[sample of {len(sample)} pages, median of {args.nltk_repeats} repeats per page]")
    header = f"  {'page':>5} {'lang':>4} {'chars':>6} {'nltk (s)':>10} {'project (ms)':>13} {'ratio':>9}"
    print(header)
    stages = ["tokenise", "edit distance", "bleu", "meteor", "p/r/f1"]
    nltk_total = project_total = 0.0
    nltk_stage = dict.fromkeys(stages, 0.0)
    project_stage = dict.fromkeys(stages, 0.0)
    max_diff = dict.fromkeys(ocr.OCR_METRIC_KEYS, 0.0)
    for index in sample:
        lang, prediction, reference = pages[index]
        nltk_runs, project_runs, nltk_stage_runs, project_stage_runs = [], [], [], []
        for _ in range(args.nltk_repeats):
            start = time.perf_counter()
            nltk_values, stage_times = nltk_page_metrics(prediction, reference)
            nltk_runs.append(time.perf_counter() - start)
            nltk_stage_runs.append(stage_times)
            clear_word_caches()
            start = time.perf_counter()
            project_values = ocr.ocr_metrics(prediction, reference)
            project_runs.append(time.perf_counter() - start)
            clear_word_caches()
            project_stage_runs.append(project_page_breakdown(prediction, reference))
        for key in ocr.OCR_METRIC_KEYS:
            max_diff[key] = max(max_diff[key], abs(project_values[key] - (nltk_values[key] or 0.0)))
        nltk_page, project_page = statistics.median(nltk_runs), statistics.median(project_runs)
        nltk_total += nltk_page
        project_total += project_page
        for stage in stages:
            nltk_stage[stage] += statistics.median(run[stage] for run in nltk_stage_runs)
            project_stage[stage] += statistics.median(run[stage] for run in project_stage_runs)
        print(
            f"  {index:>5} {lang:>4} {len(reference):>6} {nltk_page:>10.2f} {1000 * project_page:>13.1f} "
            f"{nltk_page / project_page:>8.0f}x"
        )
    total_row = f"  {'total':>5} {'':>4} {'':>6} {nltk_total:>10.2f} {1000 * project_total:>13.1f}"
    print(f"{total_row} {nltk_total / project_total:>8.0f}x")

    print("\n  per metric, summed over the sample (medians):")
    print(f"  {'stage':>14} {'nltk (ms)':>12} {'project (ms)':>13} {'ratio':>9}")
    for stage in stages:
        ratio = nltk_stage[stage] / project_stage[stage] if project_stage[stage] > 0 else float("nan")
        print(f"  {stage:>14} {1000 * nltk_stage[stage]:>12.1f} {1000 * project_stage[stage]:>13.2f} {ratio:>8.1f}x")
    print(
        "\n  agreement, max |project - nltk| over the sample: "
        + ", ".join(f"{k} {v:.1e}" for k, v in max_diff.items())
    )

    per_page_nltk = nltk_total / len(sample)
    print(
        f"\n[summary] speed ratio on the same {len(sample)} pages: nltk / project = "
        f"{nltk_total / project_total:.0f}x ({nltk_total:.2f} s vs {project_total:.3f} s). "
        f"All {len(pages)} pages: project {project_all:.2f} s measured; nltk about "
        f"{per_page_nltk * len(pages) / 60:.0f} min extrapolated from the sample ({per_page_nltk:.1f} s/page)."
    )
    distance.MAX_DISTANCE_INPUT_LEN = old_cap
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
