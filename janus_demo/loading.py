"""From a model name to a ready engine: Hub ids, local folders, random presets, device and dtype.

Every failure a user can run into while loading becomes a `LoadError` whose message is one
sentence saying what to do; nothing here lets a bare traceback reach the console.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import presets, quantization
from .errors import LoadError
from .memory import is_out_of_memory, release_memory

logger = logging.getLogger(__name__)

JANUS_PRO_7B = "deepseek-community/Janus-Pro-7B"
JANUS_PRO_1B = "deepseek-community/Janus-Pro-1B"
# Ids from the official repository name original-format weights transformers cannot read.
ALIASES = {"deepseek-ai/janus-pro-7b": JANUS_PRO_7B, "deepseek-ai/janus-pro-1b": JANUS_PRO_1B}
# 7B bf16 weights are ~14.8 GB; below this much free memory a 4-image request would not fit.
# Quantized, the weights shrink to ~8.7 GB (int8) and ~5.9 GB (nf4), with the same room left over.
MIN_FREE_BYTES_FOR_7B = {None: 20 * 2**30, "int8": 15 * 2**30, "nf4": 12 * 2**30}
ZEROGPU_SLICE_BYTES = 70 * 2**30  # a ZeroGPU slice (H200 MIG 3g.71gb) is free when a call starts
TINY_RANDOM = "tiny-random"
RANDOM_PREFIX = "random:"
# Files a converted checkpoint needs; skips the original-format .bin shards some repos carry.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]

# Measured on a 2-core AVX2 CPU at Janus-Pro-1B's LLM shape (README, Performance): without native
# bf16 math, bf16 only wins for 1 image (0.29 vs 0.79 s/step); at 4 images fp32 is as fast
# (0.99 vs 1.08 s/step) and a 620-token understanding prefill is 6x faster (12.5 vs 78 s).
CPU_LLM_DTYPE = torch.float32


@dataclass(frozen=True)
class Precision:
    """The dtype of each part: the LLM (with the generation head), the vision encoder, the VQ decoder;
    and the quantization of the LLM's linear layers (None, "int8" or "nf4"; see quantization.py)."""

    llm: torch.dtype
    vision: torch.dtype
    vq: torch.dtype
    quantize: str | None = None


_DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def on_zerogpu() -> bool:
    """A ZeroGPU Space: the web process has no GPU of its own and must not initialise CUDA."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present, else CPU; a requested device must exist."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise LoadError(f"Unknown device {device!r}; use 'cuda', 'cuda:N' or 'cpu'.") from exc
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise LoadError("A CUDA device was requested but no GPU is visible; use --device cpu.")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise LoadError(f"There is no {chosen}; this machine has {torch.cuda.device_count()} GPU(s).")
    elif chosen.type != "cpu":
        raise LoadError(f"Device {device!r} is not supported; use 'cuda', 'cuda:N' or 'cpu'.")
    return chosen


def pick_precision(device: torch.device, dtype: str | torch.dtype | None = None) -> Precision:
    """bf16 everywhere on CUDA. On CPU fp32 by default (see CPU_LLM_DTYPE); an explicit dtype there
    applies to the LLM only, as bf16 convolutions on CPU turn a 6 s VQ decode into minutes."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES and dtype != "auto":
            raise LoadError(f"Unknown dtype {dtype!r}; use bf16, fp16 or fp32.")
        dtype = _DTYPE_NAMES.get(dtype.lower())
    if device.type == "cuda":
        bf16 = on_zerogpu() or torch.cuda.is_bf16_supported()
        llm = dtype or (torch.bfloat16 if bf16 else torch.float16)
        return Precision(llm=llm, vision=llm, vq=llm)
    return Precision(llm=dtype or CPU_LLM_DTYPE, vision=torch.float32, vq=torch.float32)


def default_model(device: torch.device, quantize: str | None = None) -> str:
    """Janus-Pro-7B on a GPU with room for it (quantized as asked), else Janus-Pro-1B; logs the reason."""
    if device.type != "cuda":
        free = None
    elif on_zerogpu():
        free = ZEROGPU_SLICE_BYTES
    else:
        free = torch.cuda.mem_get_info(device)[0]
    name, reason = model_for(free, quantize)
    logger.info("Model: %s (%s)", name, reason)
    return name


def model_for(free_bytes: int | None, quantize: str | None = None) -> tuple[str, str]:
    """The default checkpoint for a device with `free_bytes` of memory (None: no GPU) when the LLM
    is quantized as `quantize`, and why."""
    if free_bytes is None:
        return JANUS_PRO_1B, "no GPU, so the smaller model"
    gib = free_bytes / 2**30
    need = MIN_FREE_BYTES_FOR_7B[quantize]
    as_asked = f" in {quantize}" if quantize else ""
    if free_bytes >= need:
        return JANUS_PRO_7B, f"{gib:.0f} GiB free on the GPU; the 7B model{as_asked} needs {need // 2**30} GiB"
    return JANUS_PRO_1B, f"only {gib:.0f} GiB free on the GPU; the 7B model{as_asked} needs {need // 2**30} GiB"


def canonical_name(model: str) -> str:
    """Map the official repo's ids to their converted twins, and `tiny-random` to its preset."""
    if model == TINY_RANDOM:
        return f"{RANDOM_PREFIX}tiny"
    converted = ALIASES.get(model.lower())
    if converted:
        logger.info("%s is the original-format checkpoint; loading its converted twin %s", model, converted)
        return converted
    return model


def download(repo_id: str) -> Path:
    """Fetch a Hub checkpoint (progress bars in the console) or raise a LoadError that says why not."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=DOWNLOAD_PATTERNS))
    except GatedRepoError as exc:
        raise LoadError(f"{repo_id} is gated: accept its licence on huggingface.co, then log in with `hf auth login`.") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise LoadError(
            f"There is no model {repo_id!r} on the Hugging Face Hub (or it is private): check the id, "
            f"for example {JANUS_PRO_1B}."
        ) from exc
    except HFValidationError as exc:
        raise LoadError(f"{repo_id!r} is neither an existing folder nor a Hub id like {JANUS_PRO_1B}.") from exc
    except LocalEntryNotFoundError as exc:
        if isinstance(exc.__cause__, HfHubHTTPError):  # the Hub answered, but with an error
            raise LoadError(
                f"The Hugging Face Hub could not serve {repo_id} right now ({exc.__cause__.response.status_code}); "
                "try again later or pass a local checkpoint folder."
            ) from exc
        raise LoadError(
            f"Could not download {repo_id}: there is no network connection to the Hugging Face Hub and no cached "
            f"copy; connect to the internet, pass a local checkpoint folder, or use --model {TINY_RANDOM} offline."
        ) from exc
    except OSError as exc:
        if getattr(exc, "errno", None) == 28:
            raise LoadError(f"The disk is full while downloading {repo_id}; free space or point HF_HOME elsewhere.") from exc
        raise LoadError(f"Could not download {repo_id} ({exc}); check your connection and try again.") from exc


def check_checkpoint(folder: Path) -> None:
    """Refuse folders that are not converted Janus checkpoints before transformers tries them."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise LoadError(f"{folder} is not a Janus checkpoint (it has no config.json); pass a converted Janus-Pro folder.")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (ValueError, OSError) as exc:
        raise LoadError(f"{config_path} is not valid JSON; re-download the checkpoint.") from exc
    if model_type == "multi_modality":
        raise LoadError(
            f"{folder} holds original-format Janus weights that transformers cannot read; "
            f"use the converted {JANUS_PRO_7B} or {JANUS_PRO_1B}."
        )
    if model_type != "janus":
        raise LoadError(f"{folder} is a {model_type!r} model, not Janus; pass a Janus-Pro checkpoint such as {JANUS_PRO_1B}.")


def checkpoint_folder(name: str) -> Path:
    """A local folder for `name`: a random preset's cache, an existing folder, or a Hub download."""
    if name.startswith(RANDOM_PREFIX):
        return presets.ensure_on_disk(name[len(RANDOM_PREFIX) :])
    path = Path(os.path.expanduser(name))
    if path.exists():
        if not path.is_dir():
            raise LoadError(f"{path} is a file; pass the checkpoint's folder instead.")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep == "\\" and "\\" in name:
        raise LoadError(f"There is no folder {path}; check the path.")
    return download(name)


def _weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def weights_on_device(stored_bytes: int, text_config, precision: Precision) -> int:
    """Bytes the weights take on the device: bf16 checkpoints in the LLM's dtype, less what
    quantizing the language model's linear layers saves."""
    full = stored_bytes * precision.llm.itemsize // 2  # checkpoints are stored in bf16
    return full - quantization.quantized_bytes(text_config, precision.quantize, precision.llm.itemsize)


def _check_room(folder: Path, device: torch.device, precision: Precision) -> None:
    """Fail fast, before minutes of loading, when the weights cannot fit on the GPU."""
    if device.type != "cuda" or on_zerogpu():
        return
    from transformers import JanusConfig

    text_config = JanusConfig.from_pretrained(folder).text_config
    need = weights_on_device(_weights_bytes(folder), text_config, precision)
    free, _ = torch.cuda.mem_get_info(device)
    if need > free:
        smaller = "" if precision.quantize == "nf4" else "--quantize nf4, "
        raise LoadError(
            f"The model needs about {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is free on {device}; "
            f"use {smaller}{JANUS_PRO_1B} or --device cpu."
        )


def apply_precision(model, precision: Precision):
    """Cast each part to its dtype (upcasting bf16 weights to fp32 is exact). RoPE's frequencies
    stay in fp32, as `from_pretrained` keeps them: in bf16 they are 0.2% off, a phase error of
    about 1 rad by position 600, where an image's last tokens sit."""
    rope = {name: buffer for name, buffer in model.named_buffers() if name.endswith("inv_freq")}
    model.to(precision.llm)
    inner = model.model
    for part in (inner.vision_model, inner.aligner):
        part.to(precision.vision)
    inner.vqmodel.to(precision.vq)
    for name, buffer in rope.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = buffer.float()
    return model


def load_model(name: str, device: torch.device, precision: Precision):
    """(model, processor) for a canonical name; memory errors become a LoadError."""
    from safetensors import SafetensorError
    from transformers import AutoProcessor, JanusForConditionalGeneration

    try:
        preset = name[len(RANDOM_PREFIX) :] if name.startswith(RANDOM_PREFIX) else None
        if preset is not None and preset not in presets.PRESETS:
            raise LoadError(f"Unknown random preset {preset!r}; choose one of {', '.join(presets.PRESETS)}.")
        if preset is not None and not presets.PRESETS[preset].on_disk:
            model, processor = presets.build_model(preset, device=device, dtype=precision.llm)  # fast: on the device
        else:
            folder = checkpoint_folder(name)
            check_checkpoint(folder)
            _check_room(folder, device, precision)
            try:
                # Load on the CPU, then move: no accelerate needed, and ZeroGPU expects `.to("cuda")`.
                model = JanusForConditionalGeneration.from_pretrained(folder, dtype=precision.llm)
                processor = AutoProcessor.from_pretrained(folder)
            except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # missing or truncated files
                logger.warning("Loading %s failed: %s", folder, exc)
                raise LoadError(
                    f"{folder} is an incomplete or damaged Janus checkpoint (a weight, tokenizer or processor "
                    "file is missing or unreadable); download it again or pass another folder."
                ) from exc
        apply_precision(model, precision)
        if precision.quantize:  # before the move, so the GPU never holds the full-precision layers
            quantization.quantize_language_model(model, precision.quantize, device, precision.llm)
        return model.to(device).eval().requires_grad_(False), processor
    except Exception as exc:
        if isinstance(exc, LoadError) or not is_out_of_memory(exc):
            raise
    release_memory(device)  # outside the handler: the traceback no longer pins half-loaded weights
    raise _memory_error(name, device)


def _memory_error(name: str, device: torch.device) -> LoadError:
    if device.type == "cuda":
        advice = f"use --quantize nf4, {JANUS_PRO_1B}, free the GPU, or pass --device cpu"
    else:
        advice = f"use {JANUS_PRO_1B} or a machine with more RAM"
    return LoadError(f"Not enough memory to load {name} on {device}; {advice}.")


def load_engine(model: str | None = None, *, device: str | torch.device | None = None, dtype=None,
                quantize: str | None = None):
    """Load a Janus model and return a `JanusEngine` (`.model`, `.processor`, `.chat`, `.generate_images`).

    `model` is a Hub id, a local folder, `tiny-random`, or `random:<preset>` (random weights,
    no download; see `janus_demo.presets.PRESETS`). By default: Janus-Pro-7B on a GPU with
    room for it, else Janus-Pro-1B. `quantize` ("int8" or "nf4", needs bitsandbytes) stores the
    language model's linear layers in 8 or 4 bits: 7B in nf4 fits a 12 GB card. On a GPU, one
    CUDA-graph capture is tried before this returns, so a failure shows now, not mid-request.
    """
    from .engine import JanusEngine

    mode = quantization.check_mode(quantize)
    chosen_device = pick_device(device)
    precision = replace(pick_precision(chosen_device, dtype), quantize=mode)
    name = canonical_name(model) if model else default_model(chosen_device, mode)
    logger.info("Loading %s on %s (LLM %s%s, vision %s, VQ %s)", name, chosen_device,
                str(precision.llm).removeprefix("torch."), f", linear layers in {mode}" if mode else "",
                *(str(d).removeprefix("torch.") for d in (precision.vision, precision.vq)))
    if chosen_device.type == "cpu" and not mode:
        logger.info("On a CPU, --quantize nf4 or int8 makes each step several times faster (decoding reads the "
                    "weights); it changes the images' rounding")
    janus, processor = load_model(name, chosen_device, precision)
    engine = JanusEngine(janus, processor, name=name, device=chosen_device, precision=precision)
    if chosen_device.type == "cuda" and not on_zerogpu():  # ZeroGPU: no GPU in this process
        engine.generator.probe_cuda_graphs()
    return engine
