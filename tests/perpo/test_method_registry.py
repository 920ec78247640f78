"""One registry per concept: a loss added as one `Method` entry is trained, run by the demo, labelled and listed."""

from __future__ import annotations

import pytest

from perpo.cli import main
from perpo.objectives.losses import METHODS, Method, get_loss, sft_loss


def toy_loss(policy_logps, ref_logps, rewards, mask, *, lengths=None, beta=0.1, gamma=0.5):
    return sft_loss(policy_logps, ref_logps, rewards, mask, lengths=lengths, beta=beta, gamma=gamma)


@pytest.fixture
def toy(monkeypatch):
    entry = Method("Toy", "#123456", toy_loss, needs_reference=False, on_answers=True, settings={"ocr": (2e-4, 0.3)})
    monkeypatch.setitem(METHODS, "toy", entry)
    return entry


def test_a_loss_registered_once_reaches_the_trainer_the_demo_the_reports_and_the_help(toy, capsys):
    from perpo.studies.demo import DemoConfig, OCRDemoConfig, row_label
    from perpo.training.trainer import PerPOArguments
    from reports.load import method_colour, method_label, method_rank

    assert get_loss("toy") is toy_loss
    PerPOArguments(model_name_or_path="m", data="d.jsonl", loss="toy", n=1)  # on_answers: one response suffices
    ocr = OCRDemoConfig()
    assert ocr.methods == ["sft", "dpo", "perpo", "toy"] and (ocr.lr("toy"), ocr.beta("toy")) == (2e-4, 0.3)
    grounding = DemoConfig(methods=["perpo", "toy"])  # not a grounding default, but the demo runs it when named
    assert DemoConfig().methods == ["sft", "dpo", "lipo", "perpo"] and grounding.lr("toy") == toy.lr
    assert (method_label("toy"), method_colour("toy"), row_label("toy")) == ("Toy", "#123456", "+ Toy")
    assert method_rank("toy") > method_rank("perpo") > method_rank("base")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--loss sft|dpo|lipo|listwise|perpo|toy" in " ".join(capsys.readouterr().out.split())


def test_an_unregistered_method_is_refused_by_name():
    from perpo.studies.demo import DemoConfig
    from perpo.training.trainer import PerPOArguments

    with pytest.raises(ValueError, match="unknown loss 'toy'; valid choices: dpo, lipo, listwise, perpo, sft"):
        get_loss("toy")
    with pytest.raises(ValueError, match="loss must be one of sft, dpo, lipo, listwise, perpo, got 'toy'"):
        PerPOArguments(model_name_or_path="m", data="d.jsonl", loss="toy")
    with pytest.raises(ValueError, match="unknown method"):
        DemoConfig(methods=["toy"])
