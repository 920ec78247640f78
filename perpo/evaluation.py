"""`perpo eval CONFIG.yaml [--flag value]`: run lmms-eval on the `perpo_*` tasks as one config file describes.

The run is a subprocess, `python -m lmms_tasks <lmms-eval arguments>` (lmms-eval's own CLI with the perpo tasks
and the `perpo_llava` model registered even where entry points are not installed): lmms-eval keeps process-wide
state (loggers, registries, `sys.exit` on some paths, data read from environment variables when tasks load), so
a fresh process per run is the robust choice. lmms-eval catches evaluation errors and exits 0, so success is
judged by the results file it must write.

Everything lands in `output_dir`, replaced atomically (a failed run leaves the previous content untouched):

    output_dir/
      eval_config.json      the resolved EvalConfig + git SHA, package versions, machine (perpo.io.save_resolved)
      command.json          the lmms-eval command line and the PERPO_* data variables it ran with
      results.json          lmms-eval's results JSON (results[task]["<metric>,none"], configs, versions, ...)
      samples/<task>.jsonl  one line per document: process_results' keys (metrics, frame, record) + responses
      lmms_eval.log         the full console output of the run
      raw/                  lmms-eval's own output tree (<model>/<timestamp>_results.json, _samples_<task>.jsonl)
      training/             with an adapter: its train_config.json, adapter_config.json and the lists' stats.json
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from perpo.config import ConfigError, check_numbers, check_spares_inputs, opt
from perpo.distributed import free_port, threads_per_process
from perpo.io import atomic_dir, save_resolved, write_json

logger = logging.getLogger(__name__)

MODEL_WRAPPERS = ("perpo_llava", "llava_hf")
REFCOCO_SOURCES = ("local", "hub")
DATA_ERROR_PREFIX = "lmms-eval: error: "
"""How a task's data error starts its one line on lmms-eval's stderr (`lmms_tasks.data.ends_the_run`)."""
DATA_VARIABLES = {
    "synth_dir": "PERPO_SYNTH_DIR",
    "refcoco_dir": "PERPO_REFCOCO_DIR",
    "refcoco_source": "PERPO_REFCOCO_SOURCE",
    "fox_dir": "PERPO_FOX_DIR",
}
SUMMARY_METRICS = (
    *("ap50", "iou", "parse_fail", "ap50_first", "ap50_best", "iou_best"),
    *("edit_dist", "f1", "edit_dist_first", "edit_dist_best"),
    "frame",
)


@dataclass
class EvalConfig:
    """One evaluation run: a model (+ adapter), a list of tasks, sampling overrides, data folders, output folder."""

    model: str = opt(help="model folder or hub id of a LLaVA-family checkpoint (its processor is loaded from it)")
    tasks: list[str] = opt(help="lmms-eval task or group names, e.g. perpo_refcoco_all perpo_refcoco_all_bon20")
    output_dir: str = opt(help="output folder (replaced atomically): results.json, samples/, eval_config.json")
    model_wrapper: str = opt("perpo_llava", help="lmms-eval model: perpo_llava (batched, LoRA) or llava_hf (stock)")
    adapter: str | None = opt(None, help="peft LoRA adapter folder applied on top of the model (perpo_llava only)")
    merge_adapter: bool = opt(False, help="merge the adapter into the weights after loading (perpo_llava)")
    num_samples: int | None = opt(None, ge=1, help="override every task's repeats (lmms-eval --num_samples)")
    temperature: float | None = opt(None, ge=0, help="override every task's sampling temperature")
    max_new_tokens: int | None = opt(None, ge=1, help="override every task's max_new_tokens")
    seed: int = opt(0, help="seed of the per-sample random streams (perpo_llava) and of lmms-eval's --seed")
    batch_size: int = opt(16, ge=1, help="sequences per generate call (perpo_llava; llava_hf always runs 1)")
    limit: float | None = opt(
        None, gt=0, help="only the first N documents of each task (or a fraction < 1): testing only"
    )
    device: str = opt("auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    dtype: str | None = opt(None, help="float32, bfloat16, float16 or auto; default float32 on CPU, bfloat16 on GPU")
    synth_dir: str | None = opt(None, help="PERPO_SYNTH_DIR for the perpo_synth tasks (`perpo data synth`)")
    refcoco_dir: str | None = opt(None, help="PERPO_REFCOCO_DIR for perpo_refcoco* (`perpo data refcoco`)")
    refcoco_source: str | None = opt(None, help="PERPO_REFCOCO_SOURCE: local (the folder) or hub (lmms-lab parquet)")
    fox_dir: str | None = opt(None, help="PERPO_FOX_DIR: the Fox folder (en_page_ocr.json + en_pdf_png/, cn_...)")
    process_docs_parallel: int = opt(4, ge=1, help="threads scoring documents (lmms-eval --process_docs_parallel)")
    processes: int = opt(
        1,
        ge=1,
        help="data-parallel lmms-eval processes under `accelerate launch` (one per GPU, or CPU processes sharing the "
        "cores): each scores a share of the documents; the results equal one process's",
    )
    extra_args: list[str] = opt([], help="more lmms-eval CLI arguments, passed as given")
    dry_run: bool = opt(
        False,
        help="print the memory estimate of a generate call (weights + the KV cache of batch_size sequences, the "
        "prompt measured on a 640 x 480 image) and check it and the context, then stop: lmms-eval does not start",
    )

    def __post_init__(self):
        check_numbers(self)
        if self.model_wrapper not in MODEL_WRAPPERS:
            raise ConfigError(f"model_wrapper must be one of {', '.join(MODEL_WRAPPERS)}, got {self.model_wrapper!r}")
        if not self.tasks or any(not t or "," in t for t in self.tasks):
            raise ConfigError(f"tasks must be a non-empty list of task names without commas, got {self.tasks!r}")
        if self.refcoco_source not in (None, *REFCOCO_SOURCES):
            raise ConfigError(
                f"refcoco_source must be one of {', '.join(REFCOCO_SOURCES)}, got {self.refcoco_source!r}"
            )
        for name in ("model", "adapter"):
            value = getattr(self, name)
            if value and "," in value:
                raise ConfigError(f"{name} {value!r} contains a comma, which lmms-eval's --model_args cannot carry")
        if self.model_wrapper == "llava_hf" and self.adapter:
            raise ConfigError("llava_hf cannot load a peft adapter: use model_wrapper: perpo_llava")
        check_task_names(self.tasks)


def _local_or_hub(name: str) -> str:
    """An existing local path made absolute (the run may change folders); anything else is a hub id."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def model_args(cfg: EvalConfig) -> str:
    """lmms-eval's `--model_args` string for the configured wrapper."""
    from perpo.model.modeling import resolve_device

    device = resolve_device(cfg.device)
    model = _local_or_hub(cfg.model)
    if cfg.model_wrapper == "llava_hf":
        dtype = cfg.dtype or ("float32" if device == "cpu" else "bfloat16")
        return f"pretrained={model},device={device},device_map={device},dtype={dtype}"
    parts = [f"pretrained={model}", f"device={device}", f"seed={cfg.seed}"]
    if cfg.dtype:
        parts.append(f"dtype={cfg.dtype}")
    if cfg.adapter:
        parts.append(f"adapter={_local_or_hub(cfg.adapter)}")
        parts.append(f"merge_adapter={cfg.merge_adapter}")
    return ",".join(parts)


def lmms_eval_command(cfg: EvalConfig, output_path: Path) -> list[str]:
    """The subprocess command line (`python -m lmms_tasks ...`)."""
    batch_size = 1 if cfg.model_wrapper == "llava_hf" else cfg.batch_size
    launcher = [sys.executable, "-m"]
    if cfg.processes > 1:  # accelerate's data-parallel launcher (torchrun underneath; gloo when there is no GPU)
        launcher += ["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(cfg.processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     "--main_process_port", str(free_port()), "-m"]  # fmt: skip
    command = [
        *launcher, "lmms_tasks",
        "--model", cfg.model_wrapper,
        "--model_args", model_args(cfg),
        "--tasks", ",".join(cfg.tasks),
        "--batch_size", str(batch_size),
        "--seed", ",".join([str(cfg.seed)] * 4),
        "--output_path", str(output_path),
        "--log_samples",
        "--process_docs_parallel", str(cfg.process_docs_parallel),
    ]  # fmt: skip
    gen_kwargs = []
    if cfg.temperature is not None:
        gen_kwargs.append(f"temperature={cfg.temperature}")
    if cfg.max_new_tokens is not None:
        gen_kwargs.append(f"max_new_tokens={cfg.max_new_tokens}")
    if gen_kwargs:
        command += ["--gen_kwargs", ",".join(gen_kwargs)]
    if cfg.num_samples is not None:
        command += ["--num_samples", str(cfg.num_samples)]
    if cfg.limit is not None:
        command += ["--limit", str(int(cfg.limit) if cfg.limit >= 1 else cfg.limit)]
    return command + list(cfg.extra_args)


def data_environment(cfg: EvalConfig) -> dict[str, str]:
    """The PERPO_* variables the config sets (absolute paths); unset fields leave the caller's environment alone."""
    env = {}
    for field_name, variable in DATA_VARIABLES.items():
        value = getattr(cfg, field_name)
        if value is not None:
            env[variable] = value if field_name == "refcoco_source" else str(Path(value).expanduser().resolve())
    return env


def _run(command: list[str], env: dict[str, str], log_path: Path, echo: TextIO | None) -> tuple[int, str]:
    """Run `command`, copying its output to `log_path` (and `echo`); return its exit code and last lines."""
    tail: deque[str] = deque(maxlen=40)
    with (
        log_path.open("w", encoding="utf-8") as log,
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            tail.append(line)
            if echo is not None:
                echo.write(line)
                echo.flush()
    return process.returncode, "".join(tail)


def keep_training_record(adapter: Path, folder: Path) -> None:
    """Copy what `perpo train` recorded beside the adapter (and the lists' statistics) into the results folder.

    Reports then know the method, β, γ, N and margin of a run even after the adapter has moved or gone.
    """
    train_config = adapter / "train_config.json"
    if not train_config.is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train_config.json", "adapter_config.json"):
        if (adapter / name).is_file():
            shutil.copyfile(adapter / name, folder / name)
    stored = json.loads(train_config.read_text())
    data = (stored.get("PerPOArguments") or stored.get("GRPOArguments") or {}).get("data")
    stats = Path(data).expanduser().parent / "stats.json" if data else None
    if stats is not None and stats.is_file():
        shutil.copyfile(stats, folder / "stats.json")


def _tasks_root() -> Path | None:
    """`lmms_tasks/tasks/`, found without importing the tasks (importing them imports lmms-eval)."""
    import importlib.util

    spec = importlib.util.find_spec("lmms_tasks")
    return Path(spec.origin).parent / "tasks" if spec and spec.origin else None


def perpo_task_names() -> set[str]:
    """The task, group and tag names the perpo task files declare (`task: name`, `group: name`, `tag: name`)."""
    import re

    root = _tasks_root()
    names: set[str] = set()
    for path in sorted(root.glob("*/*.yaml")) if root else []:
        names.update(re.findall(r"^(?:task|group|tag):\s*([\w-]+)\s*$", path.read_text(encoding="utf-8"), re.M))
    return names


def check_task_names(tasks: list[str]) -> None:
    """Refuse a `perpo_*` task name no perpo task file declares, before lmms-eval starts (which would print three
    tracebacks and exit 0). Names of other suites' tasks are left for lmms-eval to resolve.

    Raises:
        ConfigError: naming the unknown task and the closest known one.
    """
    import difflib

    known = perpo_task_names()
    for task in tasks:
        if task.startswith("perpo_") and known and task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown task {task!r}{hint}; `python -m lmms_tasks --tasks list` lists them all")


def task_max_new_tokens(tasks: list[str]) -> int:
    """The longest answer the perpo tasks among `tasks` allow: the `max_new_tokens` of their folder's task files
    (`lmms_tasks/tasks/<folder>/`, found without importing the tasks; 64 for a task of another suite)."""
    import re

    root = _tasks_root()
    longest = 64
    for task in tasks:
        folder = next((f for f in sorted(root.iterdir()) if task.startswith(f.name)), None) if root else None
        for path in sorted(folder.glob("*yaml")) if folder else []:
            for value in re.findall(r"max_new_tokens:\s*(\d+)", path.read_text(encoding="utf-8")):
                longest = max(longest, int(value))
    return longest


def eval_plan(cfg: EvalConfig) -> dict | None:
    """Check an evaluation against the model's context and the device's memory before lmms-eval starts, and log
    the estimate (a local checkpoint folder only: a hub id is not read here).

    Raises:
        ConfigError: the prompt plus max_new_tokens exceeds the context, or (on a GPU) a generate call of
            batch_size sequences does not fit.
    """
    from PIL import Image
    from transformers import AutoConfig

    from perpo.model.families import family_of
    from perpo.model.memory import check_context, check_fits, device_memory, generation_estimate, prompt_tokens
    from perpo.model.modeling import load_processor, resolve_device, resolve_dtype
    from perpo.model.prompts import grounding_question

    if not (Path(cfg.model) / "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(cfg.model)
    family = family_of(config)
    question = grounding_question("the man on the left", family.grounding_template)
    prompt = prompt_tokens(load_processor(cfg.model), family, question, Image.new("RGB", (640, 480)))
    new_tokens = cfg.max_new_tokens or task_max_new_tokens(cfg.tasks)
    check_context(config, prompt, new_tokens, f"perpo eval {cfg.model}")
    device = resolve_device(cfg.device)
    value_bytes = resolve_dtype(cfg.dtype or "auto", device).itemsize
    estimate = generation_estimate(cfg.model, config, cfg.batch_size, prompt + new_tokens, value_bytes)
    line = f"perpo eval: batch_size {cfg.batch_size}, prompt {prompt} tokens (640 x 480 image); {estimate.describe()}"
    logger.info(line)
    if cfg.model_wrapper == "perpo_llava":
        check_fits(estimate, device_memory(device), f"perpo eval --batch_size {cfg.batch_size}")
    return {"line": line, "prompt_tokens": prompt, "total": estimate.total}


def run_eval(cfg: EvalConfig, echo: TextIO | None = sys.stderr) -> dict:
    """Run lmms-eval as `cfg` says and collect its outputs into `cfg.output_dir` (see the module docstring).

    Args:
        cfg: The run.
        echo: Where lmms-eval's console output is copied live (None: only to `lmms_eval.log`).

    Returns:
        `{"output_dir", "results", "samples": {task: path}, "summary": {task: {metric: value}}}`.

    Raises:
        RuntimeError: If lmms-eval fails or writes no results file (the message ends with its last output lines).
    """
    from perpo.model.modeling import resolve_device

    given = [cfg.model, cfg.adapter, cfg.synth_dir, cfg.refcoco_dir, cfg.fox_dir]
    check_spares_inputs("--output_dir", cfg.output_dir, given)
    plan = eval_plan(cfg)
    if cfg.dry_run:
        return {"plan": plan}
    out = Path(cfg.output_dir)
    env = {**os.environ, **data_environment(cfg)}
    if cfg.processes > 1 and resolve_device(cfg.device) == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads_per_process(cfg.processes))  # the processes share the cores
    with atomic_dir(out) as tmp:
        save_resolved(tmp, "eval_config", cfg)
        command = lmms_eval_command(cfg, tmp / "raw")
        # recorded with the final folder (the run writes into a temporary sibling that replaces it at the end)
        recorded = [str(out / "raw") if arg == str(tmp / "raw") else arg for arg in command]
        write_json(tmp / "command.json", {"command": recorded, "data_environment": data_environment(cfg)})
        logger.info("running: %s", " ".join(command))
        returncode, tail = _run(command, env, tmp / "lmms_eval.log", echo)
        found = sorted((tmp / "raw").glob("*/*_results.json"))
        data_error = next((line for line in tail.splitlines() if line.startswith(DATA_ERROR_PREFIX)), None)
        if data_error is not None:  # a task's data is missing or malformed: its one line says what and the fix
            raise ConfigError(data_error[len(DATA_ERROR_PREFIX) :])
        if returncode != 0 or len(found) != 1:
            raise RuntimeError(
                f"lmms-eval {'exited with code ' + str(returncode) if returncode else 'wrote no results file'} "
                f"(command: {' '.join(command)}). Last output:\n{tail}"
            )
        results_file = found[0]
        shutil.copyfile(results_file, tmp / "results.json")
        prefix = results_file.name[: -len("results.json")]
        (tmp / "samples").mkdir()
        samples = {}
        for path in sorted(results_file.parent.glob(f"{prefix}samples_*.jsonl")):
            task = path.name[len(prefix) + len("samples_") : -len(".jsonl")]
            shutil.copyfile(path, tmp / "samples" / f"{task}.jsonl")
            samples[task] = out / "samples" / f"{task}.jsonl"
        results = json.loads(results_file.read_text())
        if cfg.adapter:
            keep_training_record(Path(cfg.adapter), tmp / "training")
    summary = {
        task: {m: values[f"{m},none"] for m in SUMMARY_METRICS if f"{m},none" in values}
        for task, values in results.get("results", {}).items()
    }
    return {"output_dir": out, "results": out / "results.json", "samples": samples, "summary": summary}
