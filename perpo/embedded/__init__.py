"""The embedded default: what lets the whole PerPO loop run on a laptop CPU with nothing downloaded.

    tiny.py    tiny models of every family built from config (LLaVA-1.5 / NeXT / OneVision, Qwen2.5-VL), with a
               local word-level tokenizer and processors
    synth.py   the synthetic grounding benchmark (scenes of coloured shapes, referring expressions, exact boxes)
    warmup.py  the supervised warm-up that makes the committed base models (`perpo/assets/`)
    demo.py    the demo recipe (`perpo demo`, `make demo`): every stage through the project's own commands, ending
               in a report; the one module here that may import `reports`

The library core (`perpo/`) does not depend on this package; the tests and benchmarks use its tiny models.
"""
