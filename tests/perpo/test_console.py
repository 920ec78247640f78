"""perpo.console: the demo's quiet console (logs to a file, errors on screen), its summary lines, its trainer hook."""

from __future__ import annotations

import logging
import math
import warnings

from perpo.console import eval_summary, quiet_console, training_summary

HISTORY = [
    {"loss": 0.69, "rewards/accuracy": 0.5, "throughput/lists_per_s": 8.0, "epoch": 1.0, "step": 5},
    {"loss": 0.41, "rewards/accuracy": 0.91, "throughput/lists_per_s": 8.4, "epoch": 3.0, "step": 190},
    {"train_runtime": 62.3, "train_samples_per_second": 24.5, "train_loss": 0.52, "epoch": 3.0, "step": 190},
]


def test_the_training_line_reads_the_log_history_and_skips_what_was_not_logged():
    line = training_summary("perpo", HISTORY, lists=508)
    assert line == "perpo    trained 508 lists × 3 epochs in 62 s (8.2 lists/s), final reward accuracy 0.91"
    later = [*HISTORY[:2], {**HISTORY[1], "logratio/chosen": 0.8, "logratio/rejected": -2.1}, HISTORY[2]]
    later.append({"heldout/ap50": 0.612, "epoch": 3.0, "step": 190})
    assert training_summary("perpo", later, lists=508).endswith(
        "final reward accuracy 0.91, log-ratio chosen +0.80 / rejected -2.10, held-out AP@50 61.2%"
    )
    later[-1]["train_lists/ap50"] = 0.82  # train-list accuracy beside the held-out one
    assert training_summary("perpo", later, lists=508).endswith(
        "-2.10, AP@50 on its lists 82.0%, held-out AP@50 61.2%"
    )
    # SFT logs no reward accuracy: its final loss instead; without interval throughput, HF's samples per second
    sft = [{"loss": 0.37, "epoch": 1.0, "step": 1}, {"train_runtime": 5.9, "train_samples_per_second": 1.02}]
    line = training_summary("sft", sft, lists=6)
    assert line == "sft      trained 6 lists × 1 epoch in 5.9 s (1.0 lists/s), final loss 0.37"
    nan = [{**HISTORY[0], "rewards/accuracy": math.nan}, HISTORY[2]]  # a NaN (no pair in any list) is skipped
    assert "final reward accuracy" not in training_summary("dpo", nan, lists=6)


def test_the_eval_line_names_the_test_ap50_and_the_ablations_present():
    summary = {
        "perpo_synth_test": {"ap50": 0.5417, "iou": 0.47},
        "perpo_synth_test_blankimg": {"ap50": 0.0833, "parse_fail": 0.4},
        "perpo_synth_test_bon4": {"ap50_best": 0.75},
    }
    line = eval_summary("base", summary)
    assert line == "base     test AP@50 54.2%, blank image 8.3% (no box in 40%), best-of-4 oracle 75.0%"
    assert eval_summary("sft", {}) == "sft      no synthetic test results"


def test_the_eval_line_of_the_ocr_track_gives_edit_distances_not_percentages():
    summary = {
        "perpo_fox_en_page": {"edit_dist": 0.3412, "f1": 0.5},
        "perpo_fox_en_page_blankimg": {"edit_dist": 0.7531},
        "perpo_fox_en_page_bon20": {"edit_dist_first": 0.357, "edit_dist_best": 0.2351},
    }
    line = eval_summary("perpo", summary)
    assert line == "perpo    test edit distance 0.341, blank page 0.753, best-of-20 oracle 0.235"


def test_quiet_console_sends_logs_and_warnings_to_the_file_and_keeps_errors_on_screen(tmp_path, capsys):
    root = logging.getLogger()
    handler = logging.StreamHandler()  # what `perpo`'s logging.basicConfig installs
    root.addHandler(handler)
    level = root.level
    try:
        with quiet_console(tmp_path / "logs") as path:
            logging.getLogger("transformers.trainer").warning("library warning")
            logging.getLogger("peft.tuners").info("library info")
            logging.getLogger("perpo.data.sources").info("perpo info")
            logging.getLogger("perpo.data.sources").warning("perpo warning")
            logging.getLogger("lmms_eval").error("library error")
            logging.getLogger("DeepSpeed").warning("deepspeed warning")  # DeepSpeed's own handler is stdout
            warnings.warn("a python warning", UserWarning, stacklevel=1)
        logging.getLogger("perpo.after").warning("after the context")
    finally:
        root.removeHandler(handler)
    written = path.read_text()
    for text in ("library warning", "library info", "perpo info", "perpo warning", "library error", "python warning"):
        assert text in written, text
    screen = capsys.readouterr()
    shown = screen.out + screen.err
    assert "perpo warning" in shown and "library error" in shown and "after the context" in shown
    for text in ("library warning", "library info", "perpo info", "a python warning"):
        assert text not in shown, text
    assert root.level == level and not handler.filters
