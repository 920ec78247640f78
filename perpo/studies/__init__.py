"""Experiments built from the project's own commands, ending in reports (the application layer beside the CLI).

demo.py          `perpo demo` / `make demo`: the whole loop on the embedded default, one report at the end
online_study.py  the demo's online comparison: GRPO and iterative PerPO against offline PerPO
"""
