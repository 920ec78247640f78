"""`perpo sample`: N responses per instruction, append-only and resumable, behind a generation backend.

Determinism. Response i of instruction `id` is drawn from its own random stream keyed by (seed, id, i)
(`perpo.model.generation`), so what an instruction gets never depends on the batch it is in, the batch size, or where
a run was restarted. Batches are simply the remaining instructions in file order.

Resume. The output is JSONL, one line per finished instruction (the instruction record plus `responses` and
`sampler`), appended, flushed and fsynced batch by batch. A run killed at any moment (SIGKILL included) leaves at
most one torn last line: the next run truncates the file to its last complete line, checks every finished
record (valid JSON, known id, instruction unchanged), skips those ids and appends the rest. The finished file
is byte-identical to an uninterrupted run's: no duplicates, nothing lost. Image paths are rebased for the
output's folder (`perpo.data.schema.rebase_image`), so `perpo build-data` finds them from there.

Shards. Several processes sample one file data-parallel: under `torchrun` / `accelerate launch` (RANK and
WORLD_SIZE set) or with `--processes K`, rank r of W samples the instructions at positions r, r + W, ... into its
own part file `<out>.part-R-of-W` (resumable like `out` itself). When all are done, rank 0 (or the `--processes`
parent, or the next one-process run when the ranks could not meet) merges them into `out` in instruction order and
deletes them: a fresh sharded run gives the bytes of a one-process run.

Settings. `<out>.sampler.json` (written before the first line) holds the sampler settings, i.e. everything
that determines the responses: backend, model and adapter fingerprints, n, temperature, top_p, max_new_tokens,
seed, dtype and device type. Appending to an output made with other settings is refused with a message that
names the keys that differ. The same `sampler` dict is stored in every record; the sidecar also lists each run's
resolved config with the git SHA and package versions (`runs`). Batch size, limit, progress and
paths are not settings: they change how fast the file fills, not what it holds.

Backends. `GenerationBackend` is the interface (`generate(requests, n=, temperature=, ...) -> list[list[str]]`,
with the contract that the responses of a request depend only on it, the settings and the seed). `BACKENDS`
maps a name to a loader: `hf` (transformers `generate`, any family of `perpo.model.families`, optional LoRA adapter
merged in) and `vllm` (`perpo.sampling.vllm_backend`: one vLLM engine per process, for GPU machines).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perpo.config import ConfigError, check_numbers, check_spares_inputs, opt, run_metadata
from perpo.data.schema import RecordError, dump_record, load_records, rebase_image, resolve_image
from perpo.model.modeling import (
    DTYPES,
    load_processor,
    resolve_device,
    resolve_dtype,
)
from perpo.sampling.backends import BACKENDS, GenerationBackend, SampleRequest
from perpo.sampling.resume import (
    _file_settings,
    check_settings,
    finished_ids,
    recover_output,
    sampled_record,
    sampler_settings,
    settings_path,
)
from perpo.sampling.shards import find_parts, merge_parts, part_path

logger = logging.getLogger(__name__)


@dataclass
class SampleConfig:
    """Arguments of `perpo sample`."""

    model: str = opt(help="base model: a local HF checkpoint folder (any family of perpo.model.families)")
    instructions: str = opt(help="instruction JSONL (`perpo data instructions`; schema in perpo/data/schema.py)")
    out: str = opt(help="output samples JSONL: append-only; rerun the same command to resume after a stop")
    adapter: str = opt("", help="optional LoRA adapter folder (peft), merged into the model before sampling")
    n: int = opt(8, ge=1, help="responses per instruction (paper: 20)")
    temperature: float = opt(0.5, ge=0, help="sampling temperature (paper: 0.5); 0 = greedy")
    top_p: float = opt(1.0, gt=0, le=1, help="nucleus sampling mass (1.0 keeps every token)")
    max_new_tokens: int = opt(64, ge=1, help="longest response in tokens (page OCR needs thousands)")
    batch_size: int = opt(
        8, ge=1, help="instructions per generate call (each gives n rows); does not change the samples"
    )
    seed: int = opt(0, help="sampling seed; response i of instruction `id` is keyed by (seed, id, i)")
    limit: int = opt(0, ge=0, help="sample only the first LIMIT instructions of the file (0 = all)")
    image_root: str = opt("", help="folder relative image paths are read from (default: the instruction file's)")
    backend: str = opt(
        "hf", help="generation backend: hf (transformers generate) or vllm (a vLLM engine per process; perpo[vllm])"
    )
    device: str = opt("auto", help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: str = opt("auto", help="model dtype: auto (bfloat16 on a GPU, float32 on CPU), float32, bfloat16, float16")
    progress: bool = opt(True, help="show a progress bar over instructions")
    tensor_parallel_size: int = opt(1, ge=1, help="vllm: GPUs of each engine (tensor parallel)")
    vllm_args: str = opt(
        "",
        help='vllm: more vllm.LLM arguments as JSON, e.g. \'{"gpu_memory_utilization": 0.8, "max_model_len": 4096}\'',
    )
    processes: int = opt(
        1,
        ge=1,
        help="worker processes started here, each sampling its shard (one GPU each when there are as many); the "
        "shards merge into --out, the same bytes as one process. Under torchrun / accelerate launch leave 1",
    )
    dry_run: bool = opt(
        False,
        help="print the memory estimate of a generate call (weights + the KV cache of batch_size x n rows) and "
        "check it and the prompt length against the device and the model's context, then stop: no weights load",
    )

    def __post_init__(self):
        check_numbers(self)
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {sorted(BACKENDS)}, got {self.backend!r} (see docs/data.md)")
        if self.backend != "vllm" and (self.tensor_parallel_size != 1 or self.vllm_args):
            raise ConfigError("--tensor_parallel_size and --vllm_args are settings of --backend vllm")
        if self.vllm_args:
            try:
                engine = json.loads(self.vllm_args)
            except json.JSONDecodeError as err:
                raise ConfigError(f"--vllm_args must be a JSON object, got {self.vllm_args!r} ({err.msg})") from err
            if not isinstance(engine, dict):
                raise ConfigError(f"--vllm_args must be a JSON object, got {self.vllm_args!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.temperature == 0 and self.n > 1:
            logger.warning("temperature 0 is greedy decoding: all %d responses of a list will be identical", self.n)


def check_box_units(records: Sequence[dict], model, processor, image_dir: Path, source: Path) -> None:
    """Grounding records must write boxes the way the model answers: normalised, or (`pixels`) in the frame its
    family answers in (the very image its processor makes, or a relative grid), else rewards would mix units.

    Raises:
        ConfigError: naming the record, both conventions and the command that rebuilds the instructions.
    """
    from PIL import Image

    from perpo.model.families import family_of

    family = family_of(model)
    for record in records:
        if record["task"] != "grounding" or not record["image"]:
            continue
        expected = None
        if family.pixel_boxes:  # only these answer in a frame that depends on the image
            with Image.open(resolve_image(record, image_dir)) as image:
                expected = family.answer_pixels(processor, *image.size)
        have = record.get("pixels")
        if (list(expected) if expected is not None else None) != have:
            want = f"a {expected[0]}x{expected[1]} frame" if expected else "normalised boxes"
            has = f"boxes in a {have[0]}x{have[1]} frame" if have else "normalised boxes"
            raise ConfigError(
                f"{source}: record {record['id']!r} writes {has}, but this {family.model_type} model answers in "
                f"{want}: rebuild the instructions for it with `perpo data instructions --model MODEL ...`"
            )


def longest_question(records: list[dict]) -> dict:
    """The record whose question is longest: the prompt the context and memory checks must hold."""
    return max(records, key=lambda record: len(record["question"]))


def sample_plan(cfg: SampleConfig, device: str, record: dict | None = None) -> dict:
    """Check a sampling run against its device and model before any weight loads, and log the estimate.

    The prompt is measured on `record` (default: the instruction with the longest question) with its image;
    the KV cache of the `batch_size x n` rows of a `generate` call is sized from the checkpoint's config
    (`perpo.model.memory`).

    Raises:
        ConfigError: the prompt plus max_new_tokens exceeds the model's context, or (hf backend, on a GPU) the
            estimate exceeds the device's memory.
    """
    from transformers import AutoConfig

    from perpo.io import load_image
    from perpo.model.families import family_of
    from perpo.model.memory import check_context, check_fits, device_memory, generation_estimate, prompt_tokens

    source = Path(cfg.instructions)
    if record is None:
        records = load_records(source, stage="instructions")
        if not records:
            raise RecordError(f"{source}: no instructions to sample")
        record = rebase_image(
            longest_question(records), Path(cfg.image_root) if cfg.image_root else source.parent, Path(cfg.out).parent
        )
    config = AutoConfig.from_pretrained(cfg.model)
    processor = load_processor(cfg.model)
    image = resolve_image(record, Path(cfg.out).parent)
    prompt = prompt_tokens(
        processor, family_of(config), record["question"], None if image is None else load_image(image)
    )
    check_context(config, prompt, cfg.max_new_tokens, f"{source}: instruction {record['id']!r}")
    value_bytes = resolve_dtype(cfg.dtype, device).itemsize
    rows = cfg.batch_size * cfg.n
    estimate = generation_estimate(cfg.model, config, rows, prompt + cfg.max_new_tokens, value_bytes)
    line = f"perpo sample: batch_size {cfg.batch_size} x n {cfg.n}, prompt {prompt} tokens; {estimate.describe()}"
    logger.info(line)
    if cfg.backend == "hf":  # vLLM pages its cache within gpu_memory_utilization itself
        check_fits(estimate, device_memory(device), f"perpo sample --batch_size {cfg.batch_size} --n {cfg.n}", cfg.n)
    return {"line": line, "prompt_tokens": prompt, "rows": rows, "total": estimate.total}


def run_sample(cfg: SampleConfig, backend: GenerationBackend | None = None) -> dict:
    """Sample `cfg.n` responses for every unfinished instruction and append them to `cfg.out`.

    Alone (no launcher), the process first folds in the shards an earlier multi-process run left, then samples
    what is left. Under a launcher (`torchrun`, `accelerate launch`: RANK / WORLD_SIZE set), each rank samples its
    shard into its own part file; when the ranks can meet (MASTER_ADDR set), rank 0 merges the parts into `out`
    once all are done, else a later one-process run does. `cfg.processes > 1` starts that many ranks here.

    Args:
        cfg: the command's configuration.
        backend: an already loaded backend (tests); by default `BACKENDS[cfg.backend]` loads the model, and only
            when something is left to sample.

    Returns:
        {"out", "total", "resumed", "sampled", "seconds"}, plus "merged" (instructions moved from part files into
        `out`), and "rank" and "shards" (the world size) for a rank of a sharded run.

    Raises:
        RecordError: a bad instruction or output line (names file, line and field).
        ConfigError: the output was made with other settings, or the model cannot be loaded.
    """
    from perpo.distributed import launch_from_env

    if Path(cfg.out).is_dir():
        raise ConfigError(
            f"--out {cfg.out} is a folder; give the samples file, e.g. {Path(cfg.out) / 'samples.jsonl'}"
        )
    check_spares_inputs("--out", cfg.out, [cfg.instructions, cfg.model, cfg.adapter, cfg.image_root])
    launch = launch_from_env()
    if cfg.dry_run:
        from perpo.distributed import rank_device

        return {"estimate": sample_plan(cfg, rank_device(resolve_device(cfg.device), launch.local_rank))}
    if cfg.processes > 1:
        if launch.world > 1:
            raise ConfigError(
                f"--processes {cfg.processes} starts its own workers, but this process is already rank {launch.rank} "
                f"of {launch.world} under a launcher: leave --processes at 1 there"
            )
        return _run_local_processes(cfg)
    if cfg.backend == "vllm" and launch.rendezvous:
        raise ConfigError(
            "--backend vllm starts its own GPU workers and does not run under torchrun / accelerate launch: use "
            "--processes K on each machine (docs/scale.md)"
        )
    if launch.world == 1:
        merged = merge_parts(cfg)
        summary = sample_shard(cfg, backend)
        return summary | ({"merged": merged} if merged else {})
    summary = sample_shard(cfg, backend, launch)
    if not launch.rendezvous:
        logger.info(
            "shard %d of %d done; a one-process run of the same command merges the shards", launch.rank, launch.world
        )
        return summary | {"rank": launch.rank, "shards": launch.world}
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:  # gloo: only barriers travel, and it needs no GPU
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
    try:
        dist.barrier()  # every part is complete
        merged = merge_parts(cfg) if launch.rank == 0 else 0
        dist.barrier()  # nobody exits before the merged file is there
    finally:
        if created:
            dist.destroy_process_group()
    return summary | {"merged": merged, "rank": launch.rank, "shards": launch.world}


def _run_local_processes(cfg: SampleConfig) -> dict:
    """`--processes K`: K worker processes on this machine, one shard each (one GPU each when there are K), then
    the merge. A worker that fails stops the run; rerunning the command resumes every shard."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from perpo.distributed import Launch

    began = time.perf_counter()
    launches = [Launch(rank, cfg.processes, rank) for rank in range(cfg.processes)]
    gpus = _engine_gpus(cfg)
    if cfg.backend == "vllm" and cfg.adapter:
        from perpo.sampling.vllm_backend import merged_checkpoint

        merged_checkpoint(cfg)  # once, before the workers load it
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch state
    with ProcessPoolExecutor(cfg.processes, mp_context=context) as pool:
        shards = [pool.submit(_local_worker, cfg, launch, gpus[launch.rank]) for launch in launches]
        summaries = [shard.result() for shard in shards]
    merged = merge_parts(cfg)
    return {
        "out": cfg.out,
        "total": sum(s["total"] for s in summaries),
        "resumed": sum(s["resumed"] for s in summaries),
        "sampled": sum(s["sampled"] for s in summaries),
        "seconds": round(time.perf_counter() - began, 2),
        "merged": merged,
        "shards": cfg.processes,
    }


def _engine_gpus(cfg: SampleConfig) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each `--processes` worker of a vLLM run (`tensor_parallel_size` GPUs each); None for
    the `hf` backend, whose workers pick their GPU by rank.

    Raises:
        ConfigError: fewer GPUs than processes x tensor_parallel_size.
    """
    if cfg.backend != "vllm":
        return [None] * cfg.processes
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    size = cfg.tensor_parallel_size
    if len(gpus) < cfg.processes * size:
        raise ConfigError(
            f"--processes {cfg.processes} x --tensor_parallel_size {size} needs {cfg.processes * size} GPUs, "
            f"{len(gpus)} are visible"
        )
    return [",".join(gpus[rank * size : (rank + 1) * size]) for rank in range(cfg.processes)]


def _local_worker(cfg: SampleConfig, launch, gpus: str | None) -> dict:
    if gpus is not None:  # before anything touches CUDA in this fresh interpreter
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    import torch

    from perpo.distributed import threads_per_process

    if resolve_device(cfg.device) == "cpu":
        torch.set_num_threads(threads_per_process(launch.world))
    return sample_shard(
        dataclasses.replace(cfg, processes=1, progress=cfg.progress and launch.rank == 0), None, launch
    )


def sample_shard(cfg: SampleConfig, backend: GenerationBackend | None = None, launch=None) -> dict:
    """Sample this rank's shard (every instruction when alone) into its output: `cfg.out` alone, else its part
    file. Shard r of W holds the selected instructions at positions r, r + W, r + 2W, ... of the file, so an
    instruction stays with its rank across restarts. Instructions finished in `cfg.out` are skipped."""
    from tqdm import tqdm

    from perpo.distributed import Launch, rank_device
    from perpo.io import write_json

    launch = launch or Launch()
    began = time.perf_counter()
    source = Path(cfg.instructions)
    out = Path(cfg.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the samples file, e.g. {out / 'samples.jsonl'}")
    target = out if launch.world == 1 else part_path(out, launch.rank, launch.world)
    others = [p for p, _, world in find_parts(out) if world != launch.world]
    if launch.world > 1 and others:
        raise ConfigError(
            f"{others[0]} is a shard of a run with another number of processes than {launch.world}: rerun with "
            "that number to resume it, or run the same command once in one process to merge what it holds"
        )
    image_root = Path(cfg.image_root) if cfg.image_root else source.parent
    # Image paths are stored for the output's folder (relative when the image lies under it, else absolute).
    records = [rebase_image(r, image_root, out.parent) for r in load_records(source, stage="instructions")]
    if not records:
        raise RecordError(f"{source}: no instructions to sample (an empty file)")
    by_id = {r["id"]: r for r in records}
    selected = records[: cfg.limit] if cfg.limit else records
    selected = selected[launch.rank :: launch.world]
    device = rank_device(resolve_device(cfg.device), launch.local_rank)
    settings = sampler_settings(cfg, device)

    done: set[str] = set()
    if target != out and out.exists():  # a sharded run resumes what one process (or a merge) finished
        finished = recover_output(out)
        if finished:
            check_settings(out, settings)
            done = finished_ids(out, finished, by_id, _file_settings(out))
    lines = recover_output(target)
    if lines:
        check_settings(target, settings)
        # Equal up to where the checkpoint lies: keep the file's own settings, so every record carries the same.
        settings = _file_settings(target)
        done |= finished_ids(target, lines, by_id, settings)
        logger.info("%s: resuming after %d finished instructions", target, len(done))
    todo = [r for r in selected if r["id"] not in done]
    for record in todo:
        path = resolve_image(record, out.parent)
        if path is not None and not path.is_file():
            raise FileNotFoundError(
                f"{source}: image {path} of {record['id']!r} not found (relative paths are read from --image_root, "
                f"here {image_root})"
            )
    summary = {"out": str(out), "total": len(selected), "resumed": len(done & {r["id"] for r in selected})}
    if not todo:
        logger.info("%s: nothing left to sample", target)
        return summary | {"sampled": 0, "seconds": round(time.perf_counter() - began, 2)}

    if backend is None:
        # refuses a batch that cannot fit, or a prompt beyond the context
        sample_plan(cfg, device, longest_question(todo))
        backend = BACKENDS[cfg.backend](cfg, device=device, dtype=resolve_dtype(cfg.dtype, device))
    if getattr(backend, "processor", None) is not None:
        check_box_units(todo, backend.model, backend.processor, out.parent, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The settings go first, so every line written is covered by them; each run adds its config and metadata.
    runs = json.loads(settings_path(target).read_text(encoding="utf-8"))["runs"] if lines else []
    run = {"SampleConfig": dataclasses.asdict(cfg), "meta": run_metadata(), "resumed_after": len(done)}
    if launch.world > 1:
        run["shard"] = {"rank": launch.rank, "world": launch.world}
    write_json(settings_path(target), {"sampler": settings, "runs": [*runs, run]})
    label = "sampling" if launch.world == 1 else f"sampling (shard {launch.rank + 1} of {launch.world})"
    bar = tqdm(total=len(selected), initial=summary["resumed"], desc=label, unit="instr", disable=not cfg.progress)
    with target.open("ab") as handle:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            requests = [SampleRequest(r["id"], r["question"], resolve_image(r, out.parent)) for r in batch]
            responses = backend.generate(
                requests,
                n=cfg.n,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed,
            )
            if len(responses) != len(batch) or any(len(r) != cfg.n for r in responses):
                raise RuntimeError(f"backend {cfg.backend!r} returned a wrong number of responses")
            # One write per batch, then flush + fsync: a kill leaves whole lines plus at most one torn line.
            handle.write(
                "".join(
                    dump_record(sampled_record(r, texts, settings)) for r, texts in zip(batch, responses, strict=True)
                ).encode("utf-8")
            )
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    return summary | {"sampled": len(todo), "seconds": round(time.perf_counter() - began, 2)}
