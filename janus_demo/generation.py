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

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .cancellation import CancelCheck, as_cancel_check
from .errors import Cancelled, InputError, OutOfMemory
from .images import NEUTRAL_GRAY, decoded_to_images, save_png
from .memory import RESERVE_BYTES, SAFETY, free_bytes, is_out_of_memory, plan_chunks, release_memory, request_memory
from .prompts import control_tokens, neutralize
from .sampling import image_keys
from .token_loop import WARMUP_STEPS, TokenLoop, cuda_graphs_wanted, disable_graphs
from .validation import MAX_IMAGES, MAX_PROMPT_CHARS, MAX_SEED, check_int, check_number, check_text

logger = logging.getLogger(__name__)

# Images per VQ-decoder pass. One: convolution kernels round differently for different batch
# sizes, so decoding alone makes an image's pixels depend on its own tokens only, and image k
# of a batch redraws identically by itself (seed + k). It also bounds activation memory.
DECODE_BATCH = 1


@dataclass(frozen=True)
class ImageRequest:
    """One text-to-image request; checks its own values so no caller can skip validation.

    `cfg_scale` and `temperature` are one number for every image, or a list of one per image
    (a compare grid): all images still decode in one loop, image i as seed + i with its own
    settings, the same image it would be drawn alone."""

    prompt: str
    num_images: int = 4
    cfg_scale: float | tuple[float, ...] = 5.0
    temperature: float | tuple[float, ...] = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    negative_prompt: str | None = None

    @property
    def sampling(self) -> tuple:
        """Requests that agree on this can share one decoding loop (CFG and temperature are per
        image; whether CFG is on at all decides the memory estimate, so it must agree)."""
        return (self.uses_cfg, self.top_k, self.top_p)

    def __post_init__(self) -> None:
        n = check_int("num_images", self.num_images, 1, MAX_IMAGES)
        checked = {
            "prompt": check_text("prompt", self.prompt, MAX_PROMPT_CHARS),
            "negative_prompt": check_text("negative prompt", self.negative_prompt, MAX_PROMPT_CHARS, required=False)
            or None,
            "num_images": n,
            "cfg_scale": _per_image("cfg_scale", self.cfg_scale, n, 0.0, 100.0),
            "temperature": _per_image("temperature", self.temperature, n, 0.0, 100.0),
            "top_k": None if self.top_k is None else check_int("top_k", self.top_k, 1),
            "top_p": None if self.top_p is None else check_number("top_p", self.top_p, 0.0, 1.0, low_open=True),
            "seed": None if self.seed is None else check_int("seed", self.seed, 0, MAX_SEED),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # store the normalised value (4.0 -> 4)

    @property
    def cfg_scales(self) -> tuple[float, ...]:
        """The CFG scale of each image."""
        return self.cfg_scale if isinstance(self.cfg_scale, tuple) else (self.cfg_scale,) * self.num_images

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The temperature of each image."""
        return self.temperature if isinstance(self.temperature, tuple) else (self.temperature,) * self.num_images

    @property
    def uses_cfg(self) -> bool:
        """Whether any image needs an unconditional row (CFG scale 1 needs none)."""
        return any(scale != 1 for scale in self.cfg_scales)

    def with_seed(self) -> ImageRequest:
        """This request, with a random seed drawn if it has none (so the seed can be reported)."""
        return self if self.seed is not None else replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    def image(self, index: int) -> ImageRequest:
        """Image `index` as a request of its own: seed + index, one image, its own settings. It
        draws the same image (each image has its own noise, and decodes alone)."""
        return replace(self, seed=None if self.seed is None else self.seed + index, num_images=1,
                       cfg_scale=self.cfg_scales[index], temperature=self.temperatures[index])


def _per_image(name: str, value, count: int, low: float, high: float) -> float | tuple[float, ...]:
    """One number, or a list of exactly `count` numbers (kept as a tuple), each within [low, high]."""
    if not isinstance(value, (list, tuple)):
        return check_number(name, value, low, high)
    if len(value) != count:
        raise InputError(f"{name} has {len(value)} values for {count} images; give one number, or one per image.")
    return tuple(check_number(name, v, low, high) for v in value)


@dataclass
class Progress:
    """Reported after every decoding step; `preview` is set now and then (partial images), and
    `note` says something the user should know (such as drawing in memory-sized batches)."""

    step: int
    total: int
    preview: list[Image.Image] | None = None
    note: str | None = None


@dataclass
class Slice:
    """Images first..first+count-1 of a request (image i samples with seed + i); `tokens` once decoded."""

    request: ImageRequest
    seed: int
    first: int
    count: int
    tokens: torch.Tensor | None = None

    @property
    def cfg_scales(self) -> tuple[float, ...]:
        return self.request.cfg_scales[self.first : self.first + self.count]

    @property
    def temperatures(self) -> tuple[float, ...]:
        return self.request.temperatures[self.first : self.first + self.count]


class PreviewBudget:
    """Allows a preview when it would keep preview time within `fraction` of the decoding time
    (0: never). A preview decodes the finished rows, so its cost grows with them: the next one
    is predicted from the last one's cost per row."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.started = time.perf_counter()
        self.spent = 0.0
        self.per_row = 0.0

    def allows(self, rows: int) -> bool:
        decoding = time.perf_counter() - self.started - self.spent
        return self.fraction > 0 and self.spent + self.per_row * rows <= self.fraction * decoding

    @contextmanager
    def timing(self, rows: int) -> Iterator[None]:
        started = time.perf_counter()
        yield
        took = time.perf_counter() - started
        self.spent += took
        self.per_row = took / rows


@dataclass
class GenerationResult:
    images: list[Image.Image]
    tokens: torch.Tensor  # (num_images, 576) int64, on the CPU
    seed: int
    params: dict = field(default_factory=dict)

    def image_params(self, index: int) -> dict:
        """What goes into image `index`'s PNG: the request (which regenerates it) and the index."""
        return {**self.params, "image_index": index}

    def save(self, folder: str | Path, stem: str = "janus", *, scale: int = 1) -> list[Path]:
        """One PNG per image, with its parameters; `scale` 2 enlarges them as the official demo does."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            save_png(image, folder / f"{stem}_{self.seed}_{i}.png", self.image_params(i), scale=scale)
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
        self.graphs_used = False  # whether the last decoding loop replayed a CUDA graph

    @torch.inference_mode()
    def probe_cuda_graphs(self, steps: int = WARMUP_STEPS + 4) -> bool:
        """Before serving: capture and replay the decode step once (1 image, greedy, a few steps)
        and check its tokens against the eager step's. A capture that fails or differs turns
        graphs off here, not in the middle of a user's request; the outcome is logged."""
        if not cuda_graphs_wanted(self.device):
            logger.info("CUDA graphs: off (%s)", "JANUS_CUDA_GRAPHS=0 or an earlier failure"
                        if self.device.type == "cuda" else "not a CUDA device")
            return False
        probe = [Slice(ImageRequest("a probe", num_images=1, cfg_scale=5.0, temperature=0), seed=0, first=0, count=1)]

        def run(use_cuda_graph: bool) -> tuple[torch.Tensor, bool]:
            loop = self.token_loop(probe, num_tokens=steps, fixed_shapes=True)
            for _ in loop.steps(use_cuda_graph=use_cuda_graph):
                pass
            loop.release()
            return loop.tokens.cpu(), loop.graphed

        (replayed, graphed), (eager, _) = run(True), run(False)
        if graphed and not torch.equal(replayed, eager):
            disable_graphs("the probe's replayed tokens differ from the eager step's")
            return False
        logger.info("CUDA graphs: %s", "captured and replayed; same tokens as eager" if graphed else "off")
        return graphed

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ----- prompt rows -------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """`<|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>` as ids, BOS first."""
        conversation = [{"role": "user", "content": [{"type": "text", "text": neutralize(prompt, self.control_tokens)}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        # A list: before transformers 5.22 the Janus processor iterated a plain string character by character.
        return self.processor(text=[text], generation_mode="image", return_tensors="pt").input_ids[0]

    def unconditional_ids(self, cond: torch.Tensor, negative_prompt: str | None) -> torch.Tensor:
        if negative_prompt and negative_prompt.strip():
            return self.prompt_ids(negative_prompt)
        keep = (cond == self.bos_id) | (cond == self.boi_id)
        return torch.where(keep, cond, torch.full_like(cond, self.pad_id))

    def prompt_tokens(self, request: ImageRequest) -> int:
        """Length of the request's rows: its prompt or, if longer, its negative prompt."""
        return self.rows(request, 1)[0].shape[1]

    def rows(self, request: ImageRequest, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and attention mask for `count` images: [cond x count, uncond x count], left-padded."""
        return self.slice_rows([Slice(request, seed=0, first=0, count=count)])

    def slice_rows(self, slices: list[Slice]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for several slices in one loop: every conditional row first, then an unconditional
        row for each image whose CFG scale is not 1, in the same order."""
        cond, uncond = [], []
        for part in slices:
            prompt = self.prompt_ids(part.request.prompt)
            cond += [prompt] * part.count
            if part.request.uses_cfg:
                negative = self.unconditional_ids(prompt, part.request.negative_prompt)
                uncond += [negative for scale in part.cfg_scales if scale != 1]
        sequences = cond + uncond
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
        for event in self.stream_many([request], cancel=cancel, preview_budget=preview_budget):
            yield event[0] if isinstance(event, list) else event

    def stream_many(
        self,
        requests: list[ImageRequest],
        *,
        cancel: CancelCheck = None,
        preview_budget: float = 0.05,
    ) -> Iterator[Progress | list[GenerationResult]]:
        """Every image of several requests (a compare grid's cells) in one loop, as `stream` does
        for one: `Progress` events whose previews list all images in order, then one
        `GenerationResult` per request. Each image is the one its request draws alone."""
        try:
            yield from self._stream([request.with_seed() for request in requests], cancel, preview_budget)
            return
        except Cancelled:
            release_memory(self.device)
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        release_memory(self.device)  # outside the handler: the traceback no longer pins tensors
        where = "The GPU" if self.device.type == "cuda" else "The CPU"
        raise OutOfMemory(  # larger requests were halved down to one image before it came to this
            f"{where} ran out of memory drawing even a single image; try CFG scale 1 (half the memory) "
            "or a smaller model."
        )

    def images_that_fit(self, request: ImageRequest, prompt_tokens: int, most: int | None = None) -> int:
        """How many images like the request's one decoding loop can hold in free memory (at least 1)."""
        budget = free_bytes(self.device) / SAFETY - RESERVE_BYTES
        precision = {"llm_dtype": self.model.model.language_model.dtype, "vq_dtype": self.model.model.vqmodel.dtype}
        for count in range(most or request.num_images, 1, -1):
            need = request_memory(self.model.config, images=count, cfg=request.uses_cfg, prompt_tokens=prompt_tokens,
                                  decode_batch=min(count, DECODE_BATCH), **precision)
            if need.peak <= budget:
                return count
        return 1

    def token_loop(self, slices: list[Slice], *, num_tokens: int | None = None,
                   fixed_shapes: bool | None = None) -> TokenLoop:
        """The decoding state for all `slices` in one loop (the same top-k / top-p; CFG scale and
        temperature per image). Benchmarks and the start-up probe build theirs here too, so they
        time and check the loop that requests run."""
        ids, mask = self.slice_rows(slices)
        keys = torch.cat([image_keys(part.seed, part.first, part.count) for part in slices])
        request = slices[0].request
        return TokenLoop(self.model, ids, mask, keys=keys.to(self.device),
                         cfg_scales=[scale for part in slices for scale in part.cfg_scales],
                         temperatures=[t for part in slices for t in part.temperatures],
                         top_k=request.top_k, top_p=request.top_p, num_tokens=num_tokens or self.num_tokens,
                         fixed_shapes=fixed_shapes)

    @torch.inference_mode()
    def decode_slices(self, slices: list[Slice], *, is_cancelled, budget: PreviewBudget) -> Iterator[tuple]:
        """One decoding loop for all `slices` (the same top-k / top-p; CFG scale and temperature
        per image). Yields (steps done, per-slice previews or None) and, when all 576 steps are
        done, sets each slice's `tokens`."""
        loop = self.token_loop(slices)
        counts = [part.count for part in slices]
        steps = loop.steps(use_cuda_graph=cuda_graphs_wanted(self.device))
        done = 0
        try:
            for step in steps if not is_cancelled() else ():
                done = step + 1
                previews = None
                rows = done // self.grid
                if done % self.grid == 0 and done < self.num_tokens and budget.allows(rows):
                    with budget.timing(rows):
                        flat = self.preview(loop.tokens[:, :done])
                    previews = [flat[sum(counts[:i]) : sum(counts[: i + 1])] for i in range(len(counts))]
                yield done, previews
                if is_cancelled():
                    break
        finally:
            steps.close()
            self.graphs_used = loop.graphed
            tokens = loop.tokens
            loop.release()  # the KV cache goes now, also on cancel or error
        if done < self.num_tokens:
            raise Cancelled("Generation was stopped.")
        for part, part_tokens in zip(slices, tokens.split(counts)):
            part.tokens = part_tokens

    def _stream(self, requests: list[ImageRequest], cancel: CancelCheck, preview_budget: float):
        """Chunks of images that fit in memory, one after the other. Should one run out of memory
        anyway (the estimate is only an estimate), the rest are redone in halves: per-image seeds
        keep them the same images."""
        is_cancelled = as_cancel_check(cancel)
        images = [(request, index) for request in requests for index in range(request.num_images)]
        n = len(images)
        guided = next((request for request in requests if request.uses_cfg), requests[0])
        fits = self.images_that_fit(guided, max(self.prompt_tokens(request) for request in requests), most=n)
        budget = PreviewBudget(preview_budget)
        finished: list[Image.Image] = []
        finished_tokens: list[torch.Tensor] = []
        chunks_done = 0
        note = None
        while len(finished) < n:
            chunks = plan_chunks(n - len(finished), fits)
            if note is None and len(chunks) > 1:
                note = (f"Memory allows {chunks[0]} images at a time, so the {n} images are drawn in "
                        f"{len(chunks)} batches; they are the same images as in one batch.")
            count = chunks[0]
            total = self.num_tokens * (chunks_done + len(chunks))
            parts = _slices(images[len(finished) : len(finished) + count])
            try:
                for done, previews in self.decode_slices(parts, is_cancelled=is_cancelled, budget=budget):
                    preview = None
                    if previews is not None:
                        waiting = [self.blank(previews[0][0].width)] * (n - len(finished) - count)
                        preview = finished + [image for part in previews for image in part] + waiting
                    yield Progress(chunks_done * self.num_tokens + done, total, preview, note)
            except Exception as exc:
                if count == 1 or not is_out_of_memory(exc):
                    raise
            else:
                tokens = torch.cat([part.tokens for part in parts])
                finished += self.decode(tokens, is_cancelled=is_cancelled)
                finished_tokens.append(tokens.cpu())
                chunks_done += 1
                continue
            release_memory(self.device)  # outside the handler: the traceback no longer pins tensors
            fits = count // 2
            note = (f"Memory ran short, so the remaining images are drawn {fits} at a time; "
                    "they are the same images as in one batch.")
            logger.warning("out of memory at %d images at once; going on with %d", count, fits)
        counts = [request.num_images for request in requests]
        yield [
            GenerationResult(images=finished[sum(counts[:i]) : sum(counts[: i + 1])], tokens=tokens,
                             seed=request.seed, params=self.params(request, request.seed))
            for i, (request, tokens) in enumerate(zip(requests, torch.cat(finished_tokens).split(counts)))
        ]

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, *, is_cancelled=lambda: False) -> list[Image.Image]:
        """Full VQ decode, DECODE_BATCH images at a time (see there why)."""
        images: list[Image.Image] = []
        for chunk in tokens.split(DECODE_BATCH):
            if is_cancelled():
                raise Cancelled("Generation was stopped.")
            images += decoded_to_images(self.model.decode_image_tokens(chunk))
        return images

    @torch.inference_mode()
    def preview(self, tokens: torch.Tensor, batch: int = DECODE_BATCH) -> list[Image.Image]:
        """Decode only the finished rows (the decoder is convolutional) onto a gray canvas."""
        vq = self.model.model.vqmodel
        rows = tokens.shape[1] // self.grid
        previews = []
        for chunk in tokens[:, : rows * self.grid].split(batch):
            codes = F.normalize(vq.quantize.embedding(chunk), p=2, dim=-1)
            codes = codes.view(len(chunk), rows, self.grid, -1).permute(0, 3, 1, 2).contiguous()
            for strip in decoded_to_images(vq.decoder(vq.post_quant_conv(codes)).permute(0, 2, 3, 1)):
                canvas = self.blank(strip.width)
                canvas.paste(strip, (0, 0))
                previews.append(canvas)
        return previews

    @staticmethod
    def blank(side: int) -> Image.Image:
        return Image.new("RGB", (side, side), NEUTRAL_GRAY)

    def params(self, request: ImageRequest, seed: int) -> dict:
        return {
            **{k: v for k, v in asdict(request).items() if k != "seed"},
            "seed": seed,
            "model": self.model_name,
        }


def _slices(images: list[tuple[ImageRequest, int]]) -> list[Slice]:
    """(request, image index) pairs as slices: consecutive images of one request form one."""
    parts: list[Slice] = []
    for request, index in images:
        last = parts[-1] if parts else None
        if last is not None and last.request is request and last.first + last.count == index:
            last.count += 1
        else:
            parts.append(Slice(request, request.seed, first=index, count=1))
    return parts
