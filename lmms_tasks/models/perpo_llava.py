"""`perpo_llava`: an lmms-eval chat model for LLaVA-family checkpoints, with LoRA adapters and batched generation.

    lmms-eval --model perpo_llava \
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,adapter=runs/perpo/adapter,seed=0 \
        --tasks perpo_refcoco --batch_size 16 --output_path out --log_samples

What it adds over lmms-eval's `llava_hf`:

- loads any LLaVA-family folder or hub id (`llava`, `llava_next`, `llava_onevision` model types, picked from the
  config), optionally with a peft LoRA adapter on top (`adapter=DIR`, `merge_adapter=true` to merge it);
- runs on CPU (float32 by default) or GPU (bfloat16 by default); `device=` and `dtype=` override;
- batches: `--batch_size` is the number of sequences per `generate` call (requests with the same generation
  settings are batched together; a best-of-N request takes N rows);
- honours `temperature` (sampling when > 0, as `llava_hf` does), `top_p`, `max_new_tokens` and `until` (the
  answer is cut at the first stop string); sampling is reproducible per sample: sample i of a document draws
  from its own random stream seeded by (`seed`, task/split/doc id, i) (`perpo.model.generation`), so the N samples of a
  best-of-N task are distinct, and identical whatever the batch size or the other documents of the batch;
- hands each image to the processor as the checkpoint was trained to see it (`Family.prepare_image`: LLaVA-1.5's
  padded square, whatever the processor config says), as `perpo sample` and the trainer do;
- answers documents without an image (the `noimg` ablation) with a text-only prompt instead of crashing;
  documents with several images are refused with a clear error (none of the perpo tasks has them);
- also implements lmms-eval's other two request types: `loglikelihood` (the continuation's summed log-probability
  after the chat-template context, and whether greedy decoding gives it) and `generate_until_multi_round` (the
  task's `doc_to_messages(doc, round_idx=..., previous_output=...)` protocol, one answer per round).

The prompt is the checkpoint's own chat template applied to the task's messages (images first, as lmms-eval's
chat tasks build them), i.e. the same prompt `llava_hf`'s chat path builds. Data-parallel under `accelerate launch`
(lmms-eval's convention, as `llava_hf`): each process holds the model on its own GPU (`cuda` becomes the local
rank's), lmms-eval gives each rank its share of the documents and gathers the results in order; since a sample's
random stream is keyed by its document, the scores equal a one-process run's (`perpo eval --processes K` runs
this). Throughput is logged per call and lands in the results JSON's `throughput` block: docs/s over
the whole call (images, prompts, generation), tokens/s over generation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from tqdm import tqdm

from perpo.io import load_image
from perpo.model.families import family_of
from perpo.model.generation import GenerationRequest, generate

logger = logging.getLogger(__name__)

GEN_KEYS = {"max_new_tokens", "temperature", "top_p", "do_sample", "num_beams", "until"}


def truncate_at_stops(text: str, until: str | Sequence[str] | None) -> str:
    """Cut `text` at the first occurrence of any non-empty stop string (lmms-eval's `until`)."""
    stops = [until] if isinstance(until, str) else list(until or [])
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


@dataclass
class _Unit:
    """One distinct (document, generation settings) with the request positions that asked for it."""

    task: str
    split: str
    doc_id: int
    doc_to_messages: object
    gen_kwargs: dict
    positions: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.split}/{self.doc_id}"


class PerpoLlava(lmms):
    """lmms-eval chat model over `perpo.model.generation.generate` (see the module docstring).

    Args:
        pretrained: Model folder or hub id of a LLaVA-family checkpoint (its processor is loaded from the same place).
        adapter: Optional peft adapter folder applied on top.
        merge_adapter: Merge the adapter into the weights after loading (faster; rounding in low precision).
        device: "cpu", "cuda", "cuda:1", ...; default cuda when available, else cpu.
        dtype: "float32", "bfloat16", "float16" or "auto"; default float32 on CPU, bfloat16 on GPU.
        batch_size: Sequences per generate call (lmms-eval's `--batch_size`).
        max_new_tokens: Used when a task's generation_kwargs give none.
        seed: Seed of the per-sample random streams (sampling only).
        revision: Hub revision.
        trust_remote_code: Passed to from_pretrained.
        attn_implementation: Passed to from_pretrained (e.g. "sdpa", "flash_attention_2").
        max_batch_size: Accepted for lmms-eval's CLI; unused.
    """

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        adapter: str | None = None,
        merge_adapter: bool = False,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 16,
        max_new_tokens: int = 64,
        seed: int = 0,
        revision: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        max_batch_size: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(
                f"perpo_llava: unknown model_args {sorted(kwargs)}; valid: pretrained, adapter, merge_adapter, "
                "device, dtype, batch_size, max_new_tokens, seed, revision, trust_remote_code, attn_implementation"
            )
        from perpo.distributed import launch_from_env, rank_device
        from perpo.model.modeling import load_model, load_processor, resolve_device, resolve_dtype

        device = resolve_device(device)
        if launch_from_env().world > 1:  # under accelerate launch: one process per device, lmms-eval shards
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            device = rank_device(device, self.accelerator.local_process_index)
        dtype = str(resolve_dtype(dtype, device)).removeprefix("torch.")
        try:
            self.batch_size_per_gpu = int(batch_size)
        except ValueError as err:
            raise ValueError(f"perpo_llava: batch_size must be an integer, got {batch_size!r}") from err
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"perpo_llava: batch_size must be >= 1, got {batch_size}")
        self.max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        self.pretrained = str(pretrained)
        self.adapter = str(adapter) if adapter else None
        self._device = torch.device(device)
        hub_kwargs = {"trust_remote_code": bool(trust_remote_code)}
        if revision:
            hub_kwargs["revision"] = str(revision)
        self._model = load_model(
            self.pretrained,
            dtype=dtype,
            device=device,
            adapter=self.adapter,
            merge_adapter=bool(merge_adapter),
            attn_implementation=str(attn_implementation) if attn_implementation else None,
            **hub_kwargs,
        )
        self.processor = load_processor(self.pretrained, **hub_kwargs)
        self.processor.tokenizer.padding_side = "left"
        logger.info(
            "perpo_llava: %s%s on %s (%s), batch %d, rank %d of %d",
            self.pretrained,
            f" + adapter {self.adapter}" + (" (merged)" if merge_adapter else "") if self.adapter else "",
            device,
            dtype,
            self.batch_size_per_gpu,
            self._rank,
            self._world_size,
        )

    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------------------------------------------------
    def _prompt_and_image(self, messages: list[dict]) -> tuple[str, object | None]:
        """The chat-template prompt of lmms-eval messages, and their image (None when the document has none)."""
        from PIL import Image

        images, turns = [], []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                turns.append({"role": message["role"], "content": content})
                continue
            items = []
            for item in content:
                kind = item["type"]
                if kind == "text":
                    items.append({"type": "text", "text": item["text"]})
                elif kind == "image":
                    image = item["url"]
                    image = image.convert("RGB") if isinstance(image, Image.Image) else load_image(image)
                    images.append(family_of(self.model).prepare_image(image))  # as its checkpoints see it
                    items.append({"type": "image"})
                else:
                    raise ValueError(f"perpo_llava handles image and text content only, got {kind!r}")
            turns.append({"role": message["role"], "content": items})
        if len(images) > 1:
            raise ValueError(f"perpo_llava handles at most one image per document, got {len(images)}")
        prompt = self.processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        return prompt, images[0] if images else None

    def _sampling(self, gen_kwargs: dict) -> dict:
        ignored = sorted(set(gen_kwargs) - GEN_KEYS)
        if ignored:
            logger.debug("perpo_llava ignores generation_kwargs %s", ignored)
        if int(gen_kwargs.get("num_beams") or 1) != 1:
            raise ValueError("perpo_llava decodes greedily or by sampling; num_beams > 1 is not supported")
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        return {
            "temperature": temperature,
            "top_p": float(gen_kwargs.get("top_p") or 1.0),
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
        }

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answer every request; repeated requests of one document (best-of-N) get distinct reproducible samples.

        Args:
            requests: Instances whose `args` are `(ctx, doc_to_messages, gen_kwargs, doc_id, task, split)`; the
                same instance appears N times for a task with `repeats: N`.

        Returns:
            One answer per request, in request order.
        """
        started = time.perf_counter()
        units: dict[tuple, _Unit] = {}
        for position, request in enumerate(requests):
            _ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            settings = json.dumps(gen_kwargs, sort_keys=True, default=str)
            unit = units.setdefault(
                (task, split, doc_id, settings), _Unit(task, split, doc_id, doc_to_messages, dict(gen_kwargs))
            )
            unit.positions.append(position)
        groups: dict[tuple, list[_Unit]] = {}
        for (_task, _split, _doc_id, settings), unit in units.items():
            groups.setdefault((settings, len(unit.positions)), []).append(unit)

        answers: list[str | None] = [None] * len(requests)
        elapsed, new_tokens = 0.0, 0
        bar = tqdm(total=len(units), disable=self.rank != 0, desc="perpo_llava")
        for (_settings, count), members in groups.items():
            sampling = self._sampling(members[0].gen_kwargs)
            n = count if sampling["temperature"] > 0 else 1  # greedy: one answer serves every repeat
            per_call = max(1, self.batch_size_per_gpu // n)
            until = members[0].gen_kwargs.get("until")
            for start in range(0, len(members), per_call):
                chunk = members[start : start + per_call]
                batch = []
                for unit in chunk:
                    doc = self.task_dict[unit.task][unit.split][unit.doc_id]
                    prompt, image = self._prompt_and_image(unit.doc_to_messages(doc))
                    batch.append(GenerationRequest(prompt=prompt, image=image, key=unit.key))
                began = time.perf_counter()
                outputs = generate(self.model, self.processor, batch, n=n, seed=self.seed, **sampling)
                elapsed += time.perf_counter() - began
                for unit, samples in zip(chunk, outputs, strict=True):
                    samples = [truncate_at_stops(text, until) for text in samples] * (count // n)
                    new_tokens += sum(
                        len(self.processor.tokenizer(t, add_special_tokens=False).input_ids) for t in samples[:n]
                    )
                    for position, text in zip(unit.positions, samples, strict=True):
                        answers[position] = text
                bar.update(len(chunk))
        bar.close()
        wall = time.perf_counter() - started  # images, prompts and generation
        docs_per_s = len(units) / wall if wall > 0 else 0.0
        log_metrics(
            total_elapsed_time=elapsed,
            total_gen_tokens=new_tokens,
            avg_speed=new_tokens / elapsed if elapsed > 0 else 0.0,
            additional_metrics={"docs_per_s": docs_per_s, "request_count": len(requests)},
        )
        logger.info(
            "perpo_llava: %d docs (%d requests) in %.2f s (%.2f s generating), %.2f docs/s",
            len(units),
            len(requests),
            wall,
            elapsed,
            docs_per_s,
        )
        return [answer if answer is not None else "" for answer in answers]

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Log-probability of each continuation after its context (and image), and whether greedy decoding gives it.

        Args:
            requests: Instances whose `args` are `(ctx, continuation, doc_to_visual, doc_id, task, split)`, where
                `continuation` is the text or lmms-eval's `doc_to_target` function of the document.

        Returns:
            `(sum of the continuation tokens' log-probabilities, every token is the argmax)` per request. The
            context is the user turn of the checkpoint's chat template (image first); the continuation is scored
            as the start of the assistant's answer.
        """
        results = []
        tokenizer = self.processor.tokenizer
        for request in tqdm(requests, disable=self.rank != 0, desc="perpo_llava loglikelihood"):
            ctx, continuation, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            if callable(continuation):
                continuation = continuation(doc)
            continuation = str(continuation[0] if isinstance(continuation, list) else continuation)
            visuals = [v for v in (doc_to_visual(doc) if doc_to_visual else None) or [] if v is not None]
            content = [{"type": "image", "url": v} for v in visuals] + [{"type": "text", "text": ctx}]
            prompt, image = self._prompt_and_image([{"role": "user", "content": content}])
            inputs = self.processor(images=image, text=prompt, return_tensors="pt").to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            target = torch.tensor([tokenizer(continuation, add_special_tokens=False).input_ids], device=self.device)
            if target.shape[1] == 0:
                results.append((0.0, True))
                continue
            prompt_len = inputs["input_ids"].shape[1]
            inputs["input_ids"] = torch.cat([inputs["input_ids"], target], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            inputs |= family_of(self.model).text_inputs(
                self.model.config, inputs["input_ids"]
            )  # e.g. Qwen's token types
            logits = self.model(**inputs).logits[0, prompt_len - 1 : -1].float()  # the positions predicting target
            logps = torch.log_softmax(logits, dim=-1).gather(-1, target[0, :, None]).squeeze(-1)
            results.append((float(logps.sum()), bool((logits.argmax(-1) == target[0]).all())))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """lmms-eval's multi-round protocol: round 0 answers `doc_to_messages(doc)`; round k > 0 asks
        `doc_to_messages(doc, round_idx=k, previous_output=[answers so far], previous_round_info=...)` for
        `(messages, terminal, previous_output, previous_round_info)` and stops when `terminal` is true (or when the
        task returns anything else). Each round is one greedy or sampled answer, cut at the task's stop strings.

        Returns:
            The answers of every round, per request.
        """
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="perpo_llava multi-round"):
            _ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            sampling = self._sampling(gen_kwargs)
            answers: list[str] = []
            messages, info = doc_to_messages(doc), None
            while True:
                prompt, image = self._prompt_and_image(messages)
                key = f"{task}/{split}/{doc_id}/round{len(answers)}"
                ask = GenerationRequest(prompt=prompt, image=image, key=key)
                [[text]] = generate(self.model, self.processor, [ask], n=1, seed=self.seed, **sampling)
                answers.append(truncate_at_stops(text, gen_kwargs.get("until")))
                payload = doc_to_messages(
                    doc, round_idx=len(answers), previous_output=list(answers), previous_round_info=info
                )
                if not (isinstance(payload, tuple) and len(payload) == 4) or payload[1]:
                    break
                messages, _terminal, _previous, info = payload
            results.append(answers)
        return results
