"""Sampling N responses per instruction (`perpo sample`): backends, resumable output, data-parallel shards.

sample.py        `SampleConfig` and `run_sample`: check, plan, resume, sample, merge
backends.py      the `GenerationBackend` interface, the `hf` backend, `BACKENDS` by name
resume.py        the settings sidecar and the recovery of an interrupted output
shards.py        the part files of data-parallel ranks and their merge
vllm_backend.py  the `vllm` backend (GPU only), same settings and output as `hf`
"""
