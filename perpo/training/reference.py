"""The `precomputed` reference of `perpo train`: log-probs of every list under the initial model, computed once
and stored beside the training file, keyed by the model's and the data's fingerprints; a stored file whose key does
not match this run is refused, never silently reused."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from perpo.config import ConfigError
from perpo.data.collate import ListCollator
from perpo.io import write_json
from perpo.model.logprobs import sequence_logps

if TYPE_CHECKING:
    from perpo.training.trainer import PerPOArguments

logger = logging.getLogger(__name__)


def model_fingerprint(name_or_path: str) -> str:
    """A local checkpoint's content fingerprint; the id and commit for a hub model."""
    from perpo.model.modeling import checkpoint_fingerprint

    local = checkpoint_fingerprint(name_or_path)
    if local is not None:
        return local
    from transformers import AutoConfig

    return f"{name_or_path}@{getattr(AutoConfig.from_pretrained(name_or_path), '_commit_hash', '')}"


def reference_cache_key(model_fp: str, data_sha256: str, args: PerPOArguments) -> dict:
    """What stored reference log-probs depend on: the model, the training file's bytes, N and the list limit."""
    return {"model": model_fp, "data_sha256": data_sha256, "n": args.n, "max_lists": args.max_lists}


def precompute_reference(model, collator: ListCollator, records: list[dict], args: PerPOArguments, batch_size: int):
    """Reference log-probs of every list (id → N floats) with the initial model, no gradient."""
    from tqdm import tqdm

    pad = collator.processor.tokenizer.pad_token_id
    out = {}
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(records), batch_size), desc="reference log-probs", unit="batch"):
            chunk = records[start : start + batch_size]
            inputs = collator(chunk)
            logps, _ = sequence_logps(model, inputs["batch"], layout=args.layout, pad_id=pad, pack=args.pack)
            for record, row in zip(chunk, logps.tolist(), strict=True):
                out[record["id"]] = row
    return out


def load_or_compute_reference(
    model, collator: ListCollator, records: list[dict], args: PerPOArguments, batch_size: int, data_sha256: str
) -> dict:
    """Stored reference log-probs if their key matches this model and data (`data_sha256`: the training file's
    SHA-256); computed and stored otherwise."""
    key = reference_cache_key(model_fingerprint(args.model_name_or_path), data_sha256, args)
    default = Path(args.data).with_suffix(
        f".ref-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}.json"
    )
    path = Path(args.ref_logps_file) if args.ref_logps_file else default
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") != key:
            raise ConfigError(
                f"{path}: reference log-probs were computed for another model or data "
                f"(stored key {stored.get('key')}, this run {key}). Delete the file or point --ref_logps_file "
                "elsewhere."
            )
        missing = [r["id"] for r in records if r["id"] not in stored["logps"]]
        if missing:
            raise ConfigError(f"{path}: no reference log-probs for ids {missing[:3]}…")
        logger.info("reference log-probs loaded from %s", path)
        return stored["logps"]
    logps = precompute_reference(model, collator, records, args, batch_size)
    write_json(path, {"key": key, "logps": logps})
    logger.info("reference log-probs stored at %s", path)
    return logps
