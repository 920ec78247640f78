"""`perpo demo`'s configuration: per-method settings, checks, --quick; the stage clock."""

from __future__ import annotations

import os

import pytest

from perpo.config import ConfigError
from perpo.studies.demo import DemoConfig, Stages, resolve_threads


def test_each_method_gets_its_own_learning_rate_and_beta():
    cfg = DemoConfig(learning_rates=["dpo=3e-5"], betas=["perpo=2", "dpo=0.1"])
    assert (cfg.lr("dpo"), cfg.lr("sft"), cfg.beta("perpo"), cfg.beta("dpo")) == (3e-5, 3e-4, 2.0, 0.1)
    assert (cfg.lr("lipo"), cfg.beta("lipo"), cfg.lr("grpo"), cfg.beta("grpo")) == (1e-4, 0.5, 1e-4, 0.0)


def test_the_tracks_defaults_come_from_the_method_registry():
    from perpo.studies.demo import OCRDemoConfig

    ocr = OCRDemoConfig()
    assert ocr.methods == ["sft", "dpo", "perpo"] and DemoConfig().methods == ["sft", "dpo", "lipo", "perpo"]
    assert (ocr.lr("sft"), ocr.lr("dpo"), ocr.beta("dpo"), ocr.lr("perpo"), ocr.beta("perpo")) == (
        3e-3,
        3e-5,
        0.5,
        1e-4,
        0.5,
    )
    assert (ocr.lr("lipo"), ocr.beta("lipo"), ocr.beta("sft")) == (1e-4, 0.5, 0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ["sft", "ppo"]}, "unknown method.*ppo"),
        ({"n": 1}, "--n must be >= 2, got 1"),
        ({"learning_rates": ["perpo=nan"]}, "--learning_rates 'perpo=nan': the value must be a finite number > 0"),
        ({"learning_rates": ["perpo=0"]}, "must be a finite number > 0"),
        ({"betas": ["ppo=0.1"]}, "--betas 'ppo=0.1': unknown method 'ppo'"),
        ({"betas": ["dpo"]}, "--betas 'dpo': the value must be a finite number >= 0 \\(METHOD=VALUE\\)"),
        ({"instructions": 0}, "--instructions must be >= 1, got 0"),
        ({"heldout": -1}, "--heldout must be >= 0"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DemoConfig(**kwargs)


def test_quick_mode_shrinks_the_work_but_keeps_every_stage():
    cfg = DemoConfig(quick=True)
    assert (cfg.instructions, cfg.n, cfg.epochs, cfg.methods) == (24, 6, 1.0, ["sft", "dpo", "lipo", "perpo"])


def test_the_stage_clock_counts_down_what_is_left(capsys):
    stages = Stages({"a": 60.0, "b": 120.0, "c": 60.0})
    stages.start("b")
    printed = capsys.readouterr().out
    assert "[2/3] b" in printed and "about 3 min left" in printed  # b and c: 180 s


def test_threads_default_to_the_usable_cores_unless_omp_num_threads_says_otherwise(monkeypatch):
    """Sampling and training run alone: all the cores this process may use; a set OMP_NUM_THREADS (a parallel
    test run, a shared machine) wins; an explicit --threads wins over both."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert DemoConfig().threads == 0
    assert resolve_threads(0) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_threads(0) == 1 and resolve_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert resolve_threads(0) == len(os.sched_getaffinity(0))
