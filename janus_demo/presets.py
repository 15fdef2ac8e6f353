"""Randomly initialised Janus models with the real geometry, built offline.

Tests and benchmarks cannot download weights, so they run on these. Every preset has the
real image geometry (384x384 input, 576 image tokens, 16384-entry codebook, 384x384 output),
a tokenizer with every Janus special token, and the Hub checkpoints' chat template. Only the
widths differ: `tiny` is a few MB, `janus-pro-1b` and `janus-pro-7b` are the real sizes.

Small presets are saved once to a cache folder and loaded back through `from_pretrained`,
exactly like a downloaded checkpoint; the real-size ones are built in memory on the target
device because writing 15 GB of random weights to disk would prove nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, BOI, EOI, USER, ASSISTANT]

# The chat template of the converted Hub checkpoints (deepseek-community/Janus-Pro-*), so that
# prompts rendered for a random model are byte-for-byte the prompts the real model sees.
CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<｜end▁of▁sentence｜>']%}"
    "{%set i=0%}"
    "{%for message in messages%}"
    "{%if message['role']|lower=='user'%}"
    "<|User|>: "
    "{%elif message['role']|lower=='assistant'%}"
    "<|Assistant|>:{%if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' "
    "and message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}"
    "{{message['role'].capitalize()}}: "
    "{%endif%}"
    "{%for content in message['content']%}"
    "{%if content['type']=='image'%}"
    "{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}"
    "{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}"
    "{{' '+text}}"
    "{%else%}"
    "{{text}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}"
    "{{seps[0]}}"
    "{%else%}"
    "{{seps[1]}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)

# Text the tiny BPE tokenizer is trained on: enough English for prompts to split into real
# sub-words, plus the template's own punctuation.
_CORPUS_WORDS = """
a an the of and or to in on at by for with from as is are was were be been it its this that
these those there here what which who how why when where can could would should will may
please describe image picture photo drawing chart plot graph table formula equation text
read write answer question explain show tell me you your my our their his her they we he she
cat dog bird fish horse tree flower house city street car bus train boat sky cloud sun moon
star night day light dark red green blue yellow orange purple black white gray brown pink
big small large tiny old new young happy sad bright soft sharp round square line circle
triangle left right top bottom middle front back inside outside above below near far over
under one two three four five six seven eight nine ten hundred thousand number value axis
label title legend bar pie scatter trend increase decrease data year month sales growth
painting sketch watercolor oil portrait landscape scene style detailed realistic cartoon
mountain river lake forest beach ocean snow rain winter summer spring autumn garden park
robot astronaut castle dragon wizard knight forest village market kitchen table chair lamp
cup book window door wall floor roof road bridge tower clock phone computer screen code
""".split()


def _corpus() -> list[str]:
    lines = [" ".join(_CORPUS_WORDS[i : i + 12]) for i in range(0, len(_CORPUS_WORDS), 12)]
    lines += [w.capitalize() + "." for w in _CORPUS_WORDS]
    lines += [
        "You are a helpful language and vision assistant.",
        "Describe this image in detail. What is in the picture?",
        "A photo of a cat sitting on a red chair, 4k, highly detailed!",
        "0 1 2 3 4 5 6 7 8 9 10 100 1000 x + y = z ( ) [ ] { } , ; : ' \" ? ! - _ / \\ * # % & @",
    ]
    return lines


@dataclass(frozen=True)
class Preset:
    """Widths of one random build; everything else is Janus-Pro's real geometry."""

    text: dict
    vision: dict
    vq: dict
    real_vocab: bool = False  # use the real 102400-token embedding table (memory figures)
    on_disk: bool = True  # save and reload through from_pretrained
    extra: dict = field(default_factory=dict)
    # Scales the LLM, generation aligner and head weights: random logits are then peaked like a
    # trained model's, so greedy and seeded tokens wander over hundreds of codes instead of a few.
    weight_scale: float = 1.0


# What Janus-Pro-1B and -7B share: SigLIP-L, the VQ decoder, the real vocabulary; built in memory.
_REAL_SIZE = dict(
    vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    vq=dict(base_channels=128, channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, latent_channels=256),
    real_vocab=True,
    on_disk=False,
)
_TINY = Preset(
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    vision=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2),
    vq=dict(base_channels=32, channel_multiplier=[1, 1, 1, 1, 1], num_res_blocks=0, latent_channels=32),
)
PRESETS: dict[str, Preset] = {
    "tiny": _TINY,
    "lively": replace(_TINY, weight_scale=8.0),  # peaked logits, like a trained model's
    "small": Preset(
        text=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8),
        vision=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4),
        vq=dict(base_channels=32, channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=1, latent_channels=64),
    ),
    "janus-pro-1b": Preset(
        text=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16),
        **_REAL_SIZE,
    ),
    "janus-pro-7b": Preset(
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30, num_attention_heads=32),
        **_REAL_SIZE,
    ),
}
_BUILD_VERSION = 1  # bump when the build recipe changes, so stale caches are rebuilt


def cache_root() -> Path:
    """Where small presets are stored: $JANUS_DEMO_CACHE, else ~/.cache/janus_demo."""
    env = os.environ.get("JANUS_DEMO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "janus_demo"


def build_tokenizer():
    """A byte-level BPE with every Janus special token, trained in memory (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IMAGE, BOI, EOI, USER, ASSISTANT],
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
        model_max_length=16384,
    )


def build_processor():
    from transformers import JanusImageProcessorPil, JanusProcessor

    image_processor = JanusImageProcessorPil(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        chat_template=CHAT_TEMPLATE,
        use_default_system_prompt=True,
    )


def build_config(preset: Preset, tokenizer):
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    hidden = preset.text["hidden_size"]
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))}
    text = LlamaConfig(
        vocab_size=102400 if preset.real_vocab else len(tokenizer),
        max_position_embeddings=16384,
        rms_norm_eps=1e-6,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        **preset.text,
    )
    vision = JanusVisionConfig(image_size=384, patch_size=16, projection_dim=hidden, depth=2, **preset.vision)
    vq = JanusVQVAEConfig(
        embed_dim=8, num_embeddings=16384, projection_dim=hidden, image_token_embed_dim=hidden, **preset.vq
    )
    return JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        tie_word_embeddings=False,  # DeepSeek-LLM has its own LM head; tied random weights only echo the input
    )


def _configure_generation(model, tokenizer) -> None:
    """What the converted Hub checkpoints carry, so `generate(generation_mode="image")` runs."""
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.convert_tokens_to_ids(PAD)
    gen.guidance_scale = 5
    gen.temperature = 1.0
    gen.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids(BOI)}
    gen._from_model_config = False  # otherwise generation_kwargs is dropped on reload


def build_model(name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Build preset `name` with deterministic random weights; returns (model, processor)."""
    from transformers import JanusForConditionalGeneration

    preset = PRESETS[name]
    processor = build_processor()
    config = build_config(preset, processor.tokenizer)
    previous_dtype = torch.get_default_dtype()
    device = torch.device(device)
    rng_devices = [device.index or 0] if device.type == "cuda" else []  # leave the caller's RNG state as it was
    with torch.random.fork_rng(devices=rng_devices), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = JanusForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(previous_dtype)
    if preset.weight_scale != 1:
        inner = model.model
        with torch.no_grad():
            for part in (inner.language_model.layers, inner.generation_aligner, inner.generation_head):
                for weight in part.parameters():
                    if weight.dim() > 1:
                        weight.mul_(preset.weight_scale)
    _configure_generation(model, processor.tokenizer)
    return model.eval(), processor


def _fingerprint(name: str) -> str:
    import transformers

    recipe = {"preset": asdict(PRESETS[name]), "version": _BUILD_VERSION, "template": CHAT_TEMPLATE,
              "corpus": _corpus(), "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def ensure_on_disk(name: str) -> Path:
    """Build preset `name` once and return its checkpoint folder (safe across processes)."""
    if not PRESETS[name].on_disk:
        raise ValueError(f"preset {name!r} is built in memory only")
    target = cache_root() / f"{name}-{_fingerprint(name)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Building the random %s Janus model in %s (one-off, offline)", name, target)
    model, processor = build_model(name)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: theirs is identical
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
