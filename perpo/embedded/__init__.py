"""The embedded default: what lets the whole PerPO loop run on a laptop CPU with nothing downloaded.

    tiny.py       tiny models of every family built from config (LLaVA-1.5 / NeXT / OneVision, Qwen2.5-VL), with
                  a local word-level tokenizer and processors
    synth.py      the synthetic grounding benchmark (scenes of coloured shapes, referring expressions, exact boxes)
    synth_ocr.py  the synthetic page-OCR benchmark (lines of words on small pages, in Fox's layout)
    synth_probe.py  POPE's yes/no probes and the description probe on the synthetic scenes
    warmup.py     the supervised warm-up that makes the committed base models (`perpo/assets/`)

The demo that runs on it is `perpo.studies.demo`. The library core does not depend on this package; the tests and
benchmarks use its tiny models.
"""
