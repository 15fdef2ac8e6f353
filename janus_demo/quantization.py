"""Low-memory loading: the language model's linear layers in 8 or 4 bits (bitsandbytes).

Janus-Pro-7B in bf16 needs ~15 GB for its weights alone, so it does not fit 8 to 16 GB
cards; in nf4 its weights take ~6 GB. Only the language model's linear layers (96% of the
7B weights) are quantized, with the settings of transformers' `BitsAndBytesConfig`; the
layers are swapped one by one and quantized as they move to the device, so a checkpoint
never needs its full bf16 size on the GPU and in-memory random presets work the same way.
On a CPU, where a decoding step is bound by reading the weights, it is also 2-8x faster for
Janus-Pro-1B's shapes (README, Performance), at the cost of the rounding.
"""

from __future__ import annotations

import logging

import torch

from .errors import LoadError

logger = logging.getLogger(__name__)

MODES = ("int8", "nf4")
# Kept in the model's dtype, and why. They are small next to the language model (~0.5 B of 7.4 B
# parameters), and image quality hangs on them.
NOT_QUANTIZED = {
    "model.vision_model": "SigLIP vision tower: every understanding answer starts from its features",
    "model.aligner": "understanding aligner: two small layers into the LLM's embedding space",
    "model.generation_embeddings": "image-token embeddings: each drawn token is fed back through them",
    "model.generation_aligner": "generation aligner: two small layers, run on every drawn token",
    "model.generation_head": "generation head: its logits go through CFG, which magnifies any error 5x",
    "model.vqmodel": "VQ decoder: convolutions that turn tokens into pixels",
    "lm_head": "text head: a 102400-word softmax whose ranking decides every answer's words",
}
# Bytes per weight once quantized, with the scales: int8 keeps one fp32 scale per row, nf4 one
# absmax per 64 weights (itself 8-bit with double quantization).
BYTES_PER_WEIGHT = {"int8": 1.0, "nf4": 0.53}
BLOCK = 64  # bitsandbytes' 4-bit block; its CPU kernels need each layer's inputs to be a multiple of it


def _not_the_cast_notice(record: logging.LogRecord) -> bool:
    """int8 layers take fp16 inputs; bitsandbytes logs so at every step otherwise."""
    return "inputs will be cast" not in record.getMessage()


def check_mode(quantize: str | None) -> str | None:
    """None, "int8" or "nf4" (any case); anything else is refused in one sentence."""
    if quantize is None or str(quantize).lower() in ("", "none", "off"):
        return None
    mode = str(quantize).lower()
    if mode not in MODES:
        raise LoadError(f"Unknown quantization {quantize!r}; use int8, nf4, or leave it off.")
    return mode


def bnb_config(mode: str, compute_dtype: torch.dtype):
    """transformers' description of the quantization: bitsandbytes' settings and the skipped modules."""
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LoadError(f"--quantize {mode} needs bitsandbytes: pip install bitsandbytes.") from exc
    return BitsAndBytesConfig(
        load_in_8bit=mode == "int8",
        load_in_4bit=mode == "nf4",
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=list(NOT_QUANTIZED),
    )


def quantizable_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """The language model's linear layers (attention and MLP projections), by qualified name."""
    return [(f"model.language_model.{name}", module) for name, module in model.model.language_model.named_modules()
            if type(module) is torch.nn.Linear]


def _quantized_copy(linear: torch.nn.Linear, config):
    import bitsandbytes as bnb

    bias = linear.bias is not None
    if config.load_in_4bit:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, device="meta",
                                  compute_dtype=config.bnb_4bit_compute_dtype, quant_type=config.bnb_4bit_quant_type,
                                  compress_statistics=config.bnb_4bit_use_double_quant)
        layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, module=layer,
                                         quant_type=config.bnb_4bit_quant_type,
                                         compress_statistics=config.bnb_4bit_use_double_quant)
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, device="meta",
                                    has_fp16_weights=False, threshold=config.llm_int8_threshold)
        layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    if bias:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return layer


def quantize_language_model(model, mode: str, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Swap the language model's linear layers for bitsandbytes ones on `device`, one at a time
    (each is quantized as it moves, so the peak is one layer in full precision)."""
    config = bnb_config(mode, compute_dtype)
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_not_the_cast_notice)
    linears = quantizable_linears(model)
    if mode == "nf4" and device.type == "cpu":  # Janus-Pro's widths all are multiples; the `small` preset's 1376 is not
        kept = [name for name, linear in linears if linear.in_features % BLOCK]
        linears = [(name, linear) for name, linear in linears if not linear.in_features % BLOCK]
        if kept:
            logger.info("Kept %d layers in full precision: bitsandbytes' CPU 4-bit kernels need inputs in multiples "
                        "of %d", len(kept), BLOCK)
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, _quantized_copy(linear, config).to(device))
    logger.info("Quantized %d linear layers of the language model to %s; kept in %s: %s", len(linears), mode,
                str(compute_dtype).removeprefix("torch."), ", ".join(NOT_QUANTIZED))


def quantized_bytes(text_config, mode: str | None, dtype_bytes: int) -> int:
    """Bytes the language model's linear layers save when quantized (0 without quantization)."""
    if mode is None:
        return 0
    hidden, inner = text_config.hidden_size, text_config.intermediate_size
    head_dim = getattr(text_config, "head_dim", None) or hidden // text_config.num_attention_heads
    attention = 2 * hidden * hidden + 2 * hidden * text_config.num_key_value_heads * head_dim
    weights = text_config.num_hidden_layers * (attention + 3 * hidden * inner)
    return int(weights * (dtype_bytes - BYTES_PER_WEIGHT[mode]))
