"""The tiny LLaVA of the embedded default: built from config, with a tokenizer and processor made locally.

Nothing is downloaded. The result is a real `LlavaForConditionalGeneration` (CLIP-style vision tower, two-layer
MLP projector, Llama-style language model) saved with `save_pretrained`, so that
`LlavaForConditionalGeneration.from_pretrained`, `AutoProcessor.from_pretrained` and lmms-eval's `llava_hf`
load it unchanged.

The tokenizer is word-level (the `tokenizers` library) with three kinds of token:
  * one token per 2-decimal coordinate "0.00" … "1.00", so that each box coordinate is a single prediction
    (much easier to learn than digit by digit);
  * one token per word of the prompt vocabulary (the LLaVA-1.5 grounding prompt, the synthetic referring
    expressions, the OCR prompt, the chat template);
  * one token per printable ASCII character (space to tilde) plus newline, the fallback for anything else, so
    such text round-trips exactly through encode/decode (any other character, a tab or a CJK one, is `<unk>`).
Pieces are fused back without separators on decode (`decoders.Fuse`), and spaces are tokens of their own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PAD, BOS, EOS, UNK, IMAGE = SPECIAL_TOKENS
COORDINATE_TOKENS = tuple(f"{i / 100:.2f}" for i in range(101))

# Words that get a token of their own. Anything else is spelled out in characters.
PROMPT_WORDS = (
    # chat template
    "USER", "ASSISTANT",
    # LLaVA-1.5 grounding prompt and lmms-eval's refcoco preamble
    "Please", "please", "provide", "the", "bounding", "box", "coordinate", "coordinates", "of", "region", "this",
    "sentence", "describes", "Bounding", "are", "specified", "in", "format", "top", "left", "bottom", "right",
    "All", "values", "floating", "point", "numbers", "bounded", "between", "and", "Answer", "with",
    # synthetic referring expressions (perpo.embedded.synth)
    "red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "above", "below",
    "The", "a", "to", "next", "on", "small", "big", "large",
    # page OCR prompt (Fox)
    "OCR", "image", "text", "page", "Read", "all",
)  # fmt: skip

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny LLaVA. The defaults train to a useful grounding model in tens of CPU minutes."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 512
    max_positions: int = 512
    vocab_size: int = 0  # 0: exactly the tokenizer's vocabulary; larger pads the embedding/LM head (benchmarks)
    seed: int = 0

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_vocab() -> dict[str, int]:
    """Token → id: specials first (pad=0, bos=1, eos=2, unk=3, image=4), coordinates, words, characters."""
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *COORDINATE_TOKENS, *PROMPT_WORDS, *chars):
        vocab.setdefault(token, len(vocab))
    return vocab


def build_tokenizer():
    """A `PreTrainedTokenizerFast` over the word-level vocabulary (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab()
    words = sorted(PROMPT_WORDS, key=len, reverse=True)
    # A coordinate is 0.dd or 1.dd not glued to other digits; a word must stand alone; else one character.
    pattern = r"(?<![\d.])[01]\.\d\d(?![\d])|\b(?:" + "|".join(words) + r")\b|[\s\S]"
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# The public checkpoints' image processors, from their `preprocessor_config.json` on the hub (nothing is downloaded:
# the values are written here), each at its native tile side; `public_image_processor` scales the sizes to a tiny
# vision tower's side and keeps everything else (kind, crop, padding, grids, resampling, normalisation).
PUBLIC_IMAGE_PROCESSORS = {
    # llava-hf/llava-1.5-7b-hf: resize the shortest edge to 336, then a 336 x 336 centre crop (no padding)
    "llava": {
        "native": 336,
        "class": "CLIPImageProcessor",
        "size": {"shortest_edge": 336},
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True,
        "resample": 3,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    },
    # llava-hf/llava-v1.6-vicuna-7b-hf: anyres over five grids, each tile resized + centre-cropped to 336
    "llava_next": {
        "native": 336,
        "class": "LlavaNextImageProcessor",
        "size": {"shortest_edge": 336},
        "crop_size": {"height": 336, "width": 336},
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        "do_center_crop": True,
        "do_pad": True,
        "resample": 3,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    },
    # llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP 384 tiles, anyres_max_9 over every grid of 1..6 x 1..6 tiles
    "llava_onevision": {
        "native": 384,
        "class": "LlavaOnevisionImageProcessor",
        "size": {"height": 384, "width": 384},
        "image_grid_pinpoints": [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)],
        "do_pad": True,
        "resample": 3,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
}


def public_image_processor(model_type: str, side: int):
    """The image processor of `model_type`'s public checkpoint with its sizes scaled from the native tile to `side`.

    Args:
        model_type: `llava`, `llava_next` or `llava_onevision` (Qwen's are in `build_qwen2_5_vl` / `build_qwen3_vl`).
        side: the tiny vision tower's image side.
    """
    import transformers

    public = dict(PUBLIC_IMAGE_PROCESSORS[model_type])
    scale = side / public.pop("native")
    kind = getattr(transformers, public.pop("class"))
    for key in ("size", "crop_size"):
        if key in public:
            public[key] = {k: round(v * scale) for k, v in public[key].items()}
    if "image_grid_pinpoints" in public:
        public["image_grid_pinpoints"] = [
            [round(h * scale), round(w * scale)] for h, w in public["image_grid_pinpoints"]
        ]
    return kind(**public, do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True)


def build_processor(spec: TinySpec = TinySpec()):
    """`LlavaProcessor` with llava-1.5-7b-hf's image processor (a `CLIPImageProcessor` that centre-crops, scaled to
    the tiny side) + the tokenizer. The model's family pads the image to LLaVA-1.5's square before it
    (`perpo.model.families.Family.prepare_image`), as LLaVA-1.5 was trained."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=public_image_processor("llava", spec.image_size),
        tokenizer=build_tokenizer(),
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def _text_sizes(spec: TinySpec, vocab_size: int) -> dict:
    """The language model's sizes, shared by every tiny family (untied embeddings, full key/value heads)."""
    return dict(
        vocab_size=max(vocab_size, spec.vocab_size),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=False,
    )


def build_config(spec: TinySpec = TinySpec()):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vocab = build_vocab()
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=4 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        **_text_sizes(spec, len(vocab)), pad_token_id=vocab[PAD], bos_token_id=vocab[BOS], eos_token_id=vocab[EOS]
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab[IMAGE],
        image_seq_length=spec.image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )


def build_model(spec: TinySpec = TinySpec()):
    """A randomly initialised tiny `LlavaForConditionalGeneration` (seeded by `spec.seed`)."""
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(build_config(spec))
    vocab = build_vocab()
    model.generation_config = GenerationConfig(
        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[PAD], max_new_tokens=24
    )
    return model


def save_tiny_model(out: Path, spec: TinySpec = TinySpec(), model=None) -> Path:
    """Write model + processor (+ the spec as `perpo_tiny.json`) into `out` atomically; return `out`."""
    from perpo.io import atomic_dir

    model = model if model is not None else build_model(spec)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        build_processor(spec).save_pretrained(tmp)
        (tmp / "perpo_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny LLaVA (%.2f M parameters) written to %s", n_params / 1e6, out)
    return out


QWEN_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<image>\n", "<|vision_start|><|image_pad|><|vision_end|>\n")
QWEN_PATCH = 14
"""Qwen2.5-VL's own patch size: with its 2 x 2 merge, images are resized to multiples of 28 pixels, the grid that
lmms-eval's `qwen2_5_vl` model (through qwen-vl-utils) and the perpo_*_qwen tasks assume."""
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 112 * 112
"""The tiny Qwen's image sizes: 56 x 56 (4 merged tokens) to 112 x 112 (16 merged tokens)."""
QWEN3_PATCH = 16
"""Qwen3-VL's patch size (a resize grid of 32); the tiny Qwen3-VL takes 64 x 64 to 128 x 128 images."""


def _qwen_tokenizer():
    """The word-level tokenizer with Qwen's vision tokens and a chat template that writes them."""
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    tokenizer.image_token = "<|image_pad|>"
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _qwen_token_ids(tokenizer) -> dict:
    start, end, image, video = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    return dict(image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)


def _special_ids(tokenizer) -> dict:
    return dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )


def _qwen_vision(spec: TinySpec, patch: int, **extra) -> dict:
    """The Qwen-VL vision tower's sizes (a 2 x 2 merger into the language model) plus a version's own fields."""
    return dict(
        depth=spec.vision_layers,
        hidden_size=spec.vision_hidden,
        intermediate_size=2 * spec.vision_hidden,
        num_heads=spec.vision_heads,
        patch_size=patch,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=spec.text_hidden,
        **extra,
    )


def _mrope_section(spec: TinySpec) -> list[int]:
    """The rotary half-dimensions split over (temporal, height, width), as the real models split theirs."""
    half = spec.text_hidden // spec.text_heads // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def _qwen_model_and_processor(model_class, config, processor_class, video_class, tokenizer, patch, bounds, spec):
    import torch
    import transformers

    torch.manual_seed(spec.seed)
    model = model_class(config)
    model.generation_config = transformers.GenerationConfig(**_special_ids(tokenizer))
    pixels = {"patch_size": patch, "merge_size": 2, "temporal_patch_size": 2}
    min_pixels, max_pixels = bounds
    processor = processor_class(
        image_processor=transformers.Qwen2VLImageProcessor(
            **pixels, min_pixels=min_pixels, max_pixels=max_pixels, image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        ),
        tokenizer=tokenizer,
        video_processor=video_class(**pixels),
        chat_template=QWEN_CHAT_TEMPLATE,
    )  # fmt: skip
    return model, processor


def build_qwen2_5_vl(spec: TinySpec = TinySpec()):
    """A tiny random Qwen2.5-VL + processor from config: the same word-level tokenizer with Qwen's vision tokens,
    a windowed ViT with Qwen2.5-VL's 14-pixel patches and 2 × 2 patch merger, M-RoPE over a Qwen2 language model
    (sections split over 3 axes).

    Returns:
        (model, processor)
    """
    import transformers

    tokenizer = _qwen_tokenizer()
    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(
            **_text_sizes(spec, len(tokenizer)),
            rope_scaling={"type": "mrope", "mrope_section": _mrope_section(spec)},
            **_special_ids(tokenizer),
        ),
        vision_config=_qwen_vision(
            spec, QWEN_PATCH, window_size=4 * QWEN_PATCH, fullatt_block_indexes=[spec.vision_layers - 1]
        ),
        **_qwen_token_ids(tokenizer),
    )
    return _qwen_model_and_processor(
        transformers.Qwen2_5_VLForConditionalGeneration, config, transformers.Qwen2_5_VLProcessor,
        transformers.Qwen2VLVideoProcessor, tokenizer, QWEN_PATCH, (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS), spec,
    )  # fmt: skip


def build_qwen3_vl(spec: TinySpec = TinySpec()):
    """A tiny random Qwen3-VL + processor from config: Qwen3-VL's 16-pixel patches with learned position embeddings,
    2 × 2 merger plus one DeepStack merger into the first language-model layer, interleaved M-RoPE.

    Returns:
        (model, processor)
    """
    import transformers

    tokenizer = _qwen_tokenizer()
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(spec)}
    config = transformers.Qwen3VLConfig(
        text_config=dict(
            **_text_sizes(spec, len(tokenizer)),
            head_dim=spec.text_hidden // spec.text_heads,
            rope_parameters=rope | {"mrope_interleaved": True},
            **_special_ids(tokenizer),
        ),
        vision_config=_qwen_vision(spec, QWEN3_PATCH, num_position_embeddings=64, deepstack_visual_indexes=[0]),
        tie_word_embeddings=False,
        **_qwen_token_ids(tokenizer),
    )
    side = 4 * QWEN3_PATCH  # at least 2 x 2 merged tokens, so an image's positions are really 3-D
    return _qwen_model_and_processor(
        transformers.Qwen3VLForConditionalGeneration, config, transformers.Qwen3VLProcessor,
        transformers.Qwen3VLVideoProcessor, tokenizer, QWEN3_PATCH, (side * side, (2 * side) ** 2), spec,
    )  # fmt: skip


def _build_llava_anyres(family: str, spec: TinySpec):
    """A tiny LLaVA-NeXT or LLaVA-OneVision: the tiny LLaVA's towers, tiled at the public checkpoint's grids."""
    import torch
    import transformers

    image_processor = public_image_processor(family, spec.image_size)
    base = build_config(spec)
    vocab = build_vocab()
    common = dict(
        vision_config=base.vision_config,
        text_config=base.text_config,
        image_token_index=vocab[IMAGE],
        image_grid_pinpoints=image_processor.image_grid_pinpoints,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(spec.seed)
    if family == "llava_next":
        config = transformers.LlavaNextConfig(
            **common,
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_seq_length=spec.image_tokens,
        )
        model = transformers.LlavaNextForConditionalGeneration(config)
        processor = transformers.LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=build_tokenizer(),
            patch_size=spec.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE,
        )
    else:
        config = transformers.LlavaOnevisionConfig(
            # CLIP has a CLS token that SigLIP (the real OneVision tower) lacks: drop it so tiles stay square.
            **common,
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9",
        )
        model = transformers.LlavaOnevisionForConditionalGeneration(config)
        processor = transformers.LlavaOnevisionProcessor(
            image_processor=image_processor,
            tokenizer=build_tokenizer(),
            video_processor=transformers.LlavaOnevisionVideoProcessor(),
            num_image_tokens=spec.image_tokens + 1,  # counted with CLS; "default" makes the processor drop one
            vision_feature_select_strategy="default",
            chat_template=CHAT_TEMPLATE,
        )
    return model, processor


TINY_BUILDERS = {
    "llava": lambda spec: (build_model(spec), build_processor(spec)),
    "llava_next": lambda spec: _build_llava_anyres("llava_next", spec),
    "llava_onevision": lambda spec: _build_llava_anyres("llava_onevision", spec),
    "qwen2_5_vl": build_qwen2_5_vl,
    "qwen3_vl": build_qwen3_vl,
}
"""The tiny model of each family of `perpo.model.families` (a test fails when a registered family has none)."""
FAMILIES = tuple(TINY_BUILDERS)


def build_family(family: str, spec: TinySpec = TinySpec()):
    """A tiny random model + processor of a family (`TINY_BUILDERS`), for tests and benchmarks.

    Each family's processor is its public checkpoint's (`PUBLIC_IMAGE_PROCESSORS`, scaled to `spec.image_size`):
    `llava_next` and `llava_onevision` tile the image at the public grids, so the number of image tokens depends
    on the image's size, as in the real models.

    Returns:
        (model, processor)
    """
    if family not in TINY_BUILDERS:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return TINY_BUILDERS[family](spec)
