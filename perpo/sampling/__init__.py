"""Sampling N responses per instruction (`perpo sample`): backends, resumable output, data-parallel shards.

sample.py        `SampleConfig`, the `hf` backend, resume by settings and finished ids, shard merging
vllm_backend.py  the `vllm` backend (GPU only), same settings and output as `hf`
"""
