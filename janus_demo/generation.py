"""Text-to-image: the original Janus decoding loop on top of transformers' modules.

Why our own loop instead of `generate(generation_mode="image")`: that path cannot run
without CFG, has no progress, previews or cancellation, samples top-k=50 unless told
otherwise, and draws every image from one RNG stream so seeds don't survive batching.

The algorithm is the official one: each image gets a conditional row (the prompt) and an
unconditional row (the prompt with every token but BOS and <begin_of_image> replaced by
pad), `logits = uncond + cfg * (cond - uncond)` from the generation head, softmax sampling
over the whole 16384-entry codebook, 576 steps on a KV cache, then the VQ decoder.
Rows are laid out [cond x N, uncond x N] like transformers', so greedy tokens match it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import StaticCache

from .cancellation import CancelCheck, as_cancel_check
from .errors import Cancelled, OutOfMemory
from .images import NEUTRAL_GRAY, decoded_to_images, save_png
from .memory import is_out_of_memory, release_memory
from .prompts import control_tokens, neutralize
from .sampling import choose_tokens, image_uniforms
from .validation import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_SEED, check_int, check_number, check_text


@dataclass(frozen=True)
class ImageRequest:
    """One text-to-image request; checks its own values so no caller can skip validation."""

    prompt: str
    num_images: int = 4
    cfg_scale: float = 5.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        checked = {
            "prompt": check_text("prompt", self.prompt, MAX_PROMPT_CHARS),
            "negative_prompt": check_text("negative prompt", self.negative_prompt, MAX_PROMPT_CHARS, required=False)
            or None,
            "num_images": check_int("num_images", self.num_images, 1, MAX_IMAGES),
            "cfg_scale": check_number("cfg_scale", self.cfg_scale, 0.0, 100.0),
            "temperature": check_number("temperature", self.temperature, 0.0, 100.0),
            "top_k": None if self.top_k is None else check_int("top_k", self.top_k, 1),
            "top_p": None if self.top_p is None else check_number("top_p", self.top_p, 0.0, 1.0, low_open=True),
            "seed": None if self.seed is None else check_int("seed", self.seed, 0, MAX_SEED),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # store the normalised value (4.0 -> 4)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1


@dataclass
class Progress:
    """Reported after every decoding step; `preview` is set now and then (partial images)."""

    step: int
    total: int
    preview: list[Image.Image] | None = None


@dataclass
class GenerationResult:
    images: list[Image.Image]
    tokens: torch.Tensor  # (num_images, 576) int64, on the CPU
    seed: int
    params: dict = field(default_factory=dict)

    def image_params(self, index: int) -> dict:
        """What goes into image `index`'s PNG: the request (which regenerates it) and the index."""
        return {**self.params, "image_index": index}

    def save(self, folder: str | Path, stem: str = "janus") -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            save_png(image, folder / f"{stem}_{self.seed}_{i}.png", self.image_params(i))
            for i, image in enumerate(self.images)
        ]


class ImageGenerator:
    """Runs image requests against one loaded model."""

    def __init__(self, model, processor, *, model_name: str = "") -> None:
        self.model = model
        self.processor = processor
        self.model_name = model_name
        tokenizer = processor.tokenizer
        self.control_tokens = control_tokens(tokenizer)
        pad = model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.pad_token_id
        self.bos_id = tokenizer.bos_token_id
        self.boi_id = tokenizer.convert_tokens_to_ids(tokenizer.boi_token)
        self.grid = model.config.vq_config.num_patches  # 24: tokens per row and rows per image
        self.num_tokens = self.grid * self.grid  # 576

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ----- prompt rows -------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """`<|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>` as ids, BOS first."""
        conversation = [{"role": "user", "content": [{"type": "text", "text": neutralize(prompt, self.control_tokens)}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return self.processor(text=text, generation_mode="image", return_tensors="pt").input_ids[0]

    def unconditional_ids(self, cond: torch.Tensor, negative_prompt: str | None) -> torch.Tensor:
        if negative_prompt and negative_prompt.strip():
            return self.prompt_ids(negative_prompt)
        keep = (cond == self.bos_id) | (cond == self.boi_id)
        return torch.where(keep, cond, torch.full_like(cond, self.pad_id))

    def rows(self, request: ImageRequest, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and attention mask for `count` images: [cond x count, uncond x count], left-padded."""
        cond = self.prompt_ids(request.prompt)
        sequences = [cond] * count
        if request.uses_cfg:
            sequences += [self.unconditional_ids(cond, request.negative_prompt)] * count
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, length - len(seq) :] = seq
            mask[row, length - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # ----- decoding ----------------------------------------------------------------------
    def stream(
        self,
        request: ImageRequest,
        *,
        cancel: CancelCheck = None,
        preview_budget: float = 0.05,
    ) -> Iterator[Progress | GenerationResult]:
        """Yield a `Progress` after every step and the `GenerationResult` last.

        Previews are partial decodes of the rows finished so far. One is made whenever the
        time spent on previews stays within `preview_budget` of the time spent decoding
        tokens, so they cost the same small fraction on a laptop CPU and on an H100.
        Running out of memory raises `OutOfMemory` once everything has been released.
        """
        try:
            yield from self._stream(request, cancel, preview_budget)
            return
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        release_memory(self.device)  # outside the handler: the traceback no longer pins tensors
        where = "The GPU" if self.device.type == "cuda" else "The CPU"
        raise OutOfMemory(
            f"{where} ran out of memory drawing {request.num_images} image(s); try fewer images, "
            "CFG scale 1 (half the memory), or a smaller model."
        )

    @torch.inference_mode()
    def _stream(self, request: ImageRequest, cancel: CancelCheck, preview_budget: float):
        is_cancelled = as_cancel_check(cancel)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        n = request.num_images
        uniforms = torch.stack([image_uniforms(seed, i, self.num_tokens) for i in range(n)]).to(self.device)
        tokens = torch.empty((n, self.num_tokens), dtype=torch.long, device=self.device)
        started = time.perf_counter()
        preview_time = 0.0
        steps = self._decode_steps(request, tokens, uniforms, is_cancelled)
        done = 0
        try:
            for step in steps:
                done = step + 1
                preview = None
                if (step + 1) % self.grid == 0 and step + 1 < self.num_tokens:
                    elapsed = time.perf_counter() - started
                    if preview_time <= preview_budget * (elapsed - preview_time):
                        t0 = time.perf_counter()
                        preview = self.preview(tokens[:, : step + 1])
                        preview_time += time.perf_counter() - t0
                yield Progress(step + 1, self.num_tokens, preview)
        finally:
            steps.close()  # releases the KV cache at once, also on cancel or error
        if done < self.num_tokens:
            raise Cancelled("Generation was stopped.")
        images = self.decode(tokens)
        yield GenerationResult(images=images, tokens=tokens.cpu(), seed=seed, params=self.params(request, seed))

    def _decode_steps(self, request: ImageRequest, tokens, uniforms, is_cancelled) -> Iterator[int]:
        """The loop proper: fills `tokens` column by column, yielding the step index."""
        model = self.model
        language_model = model.model.language_model
        head = model.model.generation_head
        n = tokens.shape[0]
        ids, mask = self.rows(request, n)
        rows, length = ids.shape
        cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=length + self.num_tokens)
        full_mask = torch.ones((rows, length + self.num_tokens), dtype=mask.dtype, device=mask.device)
        full_mask[:, :length] = mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        embeds = model.get_input_embeddings()(ids)
        try:
            for step in range(self.num_tokens):
                if is_cancelled():
                    return
                hidden = language_model(
                    inputs_embeds=embeds,
                    attention_mask=full_mask[:, : length + step],
                    position_ids=positions,
                    cache=cache,
                    use_cache=True,
                ).last_hidden_state[:, -1, :]
                logits = head(hidden)
                if request.uses_cfg:
                    cond, uncond = logits[:n], logits[n:]
                    logits = uncond + (cond - uncond) * request.cfg_scale
                picked = choose_tokens(
                    logits, uniforms[:, step], temperature=request.temperature, top_k=request.top_k, top_p=request.top_p
                )
                tokens[:, step] = picked
                step_ids = picked.repeat(rows // n).unsqueeze(-1)
                embeds = model.prepare_embeddings_for_image_generation(step_ids)
                positions = positions[:, -1:] + 1
                yield step
        finally:
            del cache, embeds

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, batch: int = 4) -> list[Image.Image]:
        """Full VQ decode, a few images at a time to bound activation memory."""
        images: list[Image.Image] = []
        for chunk in tokens.split(batch):
            images += decoded_to_images(self.model.decode_image_tokens(chunk))
        return images

    @torch.inference_mode()
    def preview(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Decode only the finished rows (the decoder is convolutional) onto a gray canvas."""
        vq = self.model.model.vqmodel
        n, done = tokens.shape
        rows = done // self.grid
        codes = F.normalize(vq.quantize.embedding(tokens[:, : rows * self.grid]), p=2, dim=-1)
        codes = codes.view(n, rows, self.grid, -1).permute(0, 3, 1, 2).contiguous()
        strips = decoded_to_images(vq.decoder(vq.post_quant_conv(codes)).permute(0, 2, 3, 1))
        side = strips[0].width
        previews = []
        for strip in strips:
            canvas = Image.new("RGB", (side, side), NEUTRAL_GRAY)
            canvas.paste(strip, (0, 0))
            previews.append(canvas)
        return previews

    def params(self, request: ImageRequest, seed: int) -> dict:
        return {
            **{k: v for k, v in asdict(request).items() if k != "seed"},
            "seed": seed,
            "model": self.model_name,
        }
