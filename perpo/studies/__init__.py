"""Experiments built from the project's own commands, ending in reports (the application layer beside the CLI).

demo.py          `perpo demo` / `make demo`: the whole loop on the embedded default, one report at the end
stages.py        the demo's stages, each a public command called in-process
online_study.py  the demo's online comparison: GRPO and iterative PerPO against offline PerPO
search.py        the hyper-parameter search behind the demo's settings (`scripts/demo_search.py`)
seeds.py         the demo's table over seeds with paired bootstrap intervals (`scripts/demo_seeds.py`)
study_n.py       PerPO against DPO as N grows (`scripts/demo_study_n.py`)
saturation.py    PerPO against SFT as the base saturates (`scripts/demo_study_saturation.py`)
stats.py         the paired bootstrap over documents
"""
