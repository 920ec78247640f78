"""The pieces of `perpo grpo` and `perpo iterate` that need no model: rewards as TRL calls them, option checks."""

from __future__ import annotations

import pytest

from perpo.config import ConfigError
from perpo.training.grpo import GRPOArguments, completion_text, format_reward, resolve_reward, task_reward
from perpo.training.iterative import IterateConfig
from perpo.training.trainer import PerPOArguments


def test_task_and_format_rewards_read_trl_completions():
    conversational = [
        [{"role": "assistant", "content": "[0.1, 0.1, 0.5, 0.5]"}],
        [{"role": "assistant", "content": "no box"}],
    ]
    assert completion_text(conversational[0]) == "[0.1, 0.1, 0.5, 0.5]"
    assert (
        completion_text(
            [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        )
        == "ab"
    )
    iou = task_reward("iou")
    assert iou.__name__ == "iou"
    assert iou(conversational, target=[[0.1, 0.1, 0.5, 0.5]] * 2, task=["grounding"] * 2) == [1.0, 0.0]
    assert format_reward(conversational, task=["grounding", "grounding"]) == [1.0, 0.0]
    assert format_reward(["some text", "  "], task=["ocr", "ocr"]) == [1.0, 0.0]
    ocr = task_reward("ocr")
    assert ocr(["abcd"], target=["abcd"]) == [1.0] and ocr([""], target=["abcd"]) == [0.0]


def test_the_reward_follows_the_task_and_refuses_a_mix():
    args = GRPOArguments(model_name_or_path="m", data="d.jsonl")
    assert resolve_reward(args, [{"task": "grounding"}]) == "iou"
    assert resolve_reward(args, [{"task": "ocr"}]) == "ocr"
    with pytest.raises(ConfigError, match=r"d.jsonl: --reward auto needs one task .* found \['grounding', 'ocr'\]"):
        resolve_reward(args, [{"task": "grounding"}, {"task": "ocr"}])
    assert (
        resolve_reward(GRPOArguments(model_name_or_path="m", data="d", reward="ocr"), [{"task": "grounding"}]) == "ocr"
    )


def test_init_adapter_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        PerPOArguments(model_name_or_path="m", data="d", init_adapter=str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="--reference adapter \\(the base\\) or copy"):
        PerPOArguments(model_name_or_path="m", data="d", init_adapter=str(tmp_path), reference="precomputed")
    assert PerPOArguments(model_name_or_path="m", data="d", init_adapter=str(tmp_path), reference="copy").init_adapter


def test_iterate_options_are_checked():
    with pytest.raises(ConfigError, match="reference must be one of base, previous"):
        IterateConfig(model="m", instructions="i", out="o", reference="adapter")
    with pytest.raises(ConfigError, match="--train_args must not set --init_adapter, --output_dir"):
        IterateConfig(model="m", instructions="i", out="o", train_args="--output_dir x --init_adapter=y --loss dpo")


def test_reports_name_the_online_methods(tmp_path):
    import json

    from perpo.objectives.losses import METHODS
    from reports.load import method_label
    from reports.result_files import training_metadata

    assert method_label("grpo") == "GRPO" and list(METHODS)[-2:] == ["perpo_iter", "grpo"]
    (tmp_path / "train_config.json").write_text(json.dumps(
        {"GRPOArguments": {"lora_r": 8, "lora_alpha": 16, "data": None}, "GRPOConfig": {"num_generations": 20,
         "beta": 0.04, "learning_rate": 1e-5}, "loss": "grpo"}
    ))  # fmt: skip
    meta, _ = training_metadata(tmp_path)
    assert (meta["method"], meta["n"], meta["beta"], meta["learning_rate"]) == ("grpo", 20, 0.04, 1e-5)
