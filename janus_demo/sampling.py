"""How the next token is picked, shared by the image loop and seeded chat.

Sampling is Gumbel-max: argmax(logits / T + g), where g is standard Gumbel noise made by a
counter-based hash of (key, step, token). An image's key is seed + its index, so image i of
seed s is image 0 of seed s + i whether it is drawn alone, in a batch of 16, in memory-sized
chunks or beside another user's request. The noise needs no RNG state: it is computed on the
model's device inside the loop (no host transfer, no sync) and is the same integers on every
CPU and GPU.

Why not inverse-CDF or `torch.multinomial`: they turn one uniform into a token through the
cumulative sum of 16384 probabilities, so a ~1e-6 rounding change (a matmul over another
number of rows, another CPU family) flips the token whenever the uniform lies near any of
16384 boundaries. Gumbel-max flips only when the two best perturbed scores are within that
rounding of a tie.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' hash-prospector: 16 21f0aaad 15 735a2d97 15), a bijection on 32
    bits, in place on `x` (int64 values below 2**32; in place halves the CPU's memory traffic).

    Both multipliers are below 2**31, so no product of a 32-bit value overflows int64: the
    same integers on any device, with no reliance on wrap-around.
    """
    x.bitwise_xor_(x >> 16).mul_(0x21F0AAAD).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 15).mul_(0x735A2D97).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 15)


def hashed_uniforms(keys: torch.Tensor, step: torch.Tensor | int, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1), one per (row, token): hash(hash(hash(key) + step) + token), top 23 bits.

    23 bits plus a half are exact in float32 and keep 0 and 1 out, so the Gumbel transform is
    always finite. `keys` is (rows,) int64 on the model's device; `step` an int, or a tensor
    there that broadcasts against `keys` (the loop's 1-element step counter).
    """
    per_row = _mix32(_mix32(keys & _MASK32).add_(step).bitwise_and_(_MASK32))
    bits = _mix32(torch.arange(vocab, device=keys.device).add(per_row.unsqueeze(-1)).bitwise_and_(_MASK32))
    return bits.bitwise_right_shift_(9).float().add_(0.5).mul_(2.0**-23)


def gumbel_noise(keys: torch.Tensor, step: torch.Tensor | int, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise, (rows, vocab) float32, a pure function of (key, step, token)."""
    return hashed_uniforms(keys, step, vocab).log_().neg_().log_().neg_()


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Mask everything outside the top-k / nucleus with -inf (same rules as transformers' warpers)."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - top_p)
        drop[..., -1] = False  # always keep the most likely token
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def choose_tokens(
    logits: torch.Tensor,
    keys: torch.Tensor,
    step: torch.Tensor | int,
    *,
    temperature: float | torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Pick one token per row: argmax where the temperature is 0, else Gumbel-max with hashed noise.

    `logits` is (rows, vocab); `keys` is (rows,) int64: row r samples softmax(logits[r] / T),
    restricted to its top-k / nucleus, with noise keyed by (keys[r], step). `temperature` is one
    number, or a (rows,) float32 tensor of one per row (a row's pick depends only on its own).
    Scores are float32 whatever the model dtype.
    """
    if not torch.is_tensor(temperature):
        if temperature == 0:
            return logits.argmax(dim=-1)
        temperature = torch.full((logits.shape[0],), float(temperature), device=logits.device)
    greedy = temperature == 0
    temperature = torch.where(greedy, 1.0, temperature).unsqueeze(-1)
    logits = logits.float()
    scaled = logits / temperature
    # A tiny temperature (1e-40) overflows to +inf, where every overflowing token would tie:
    # such rows are shifted to a maximum of 0 first, so the likeliest token wins. Other rows
    # keep the plain formula, bit for bit (no host sync).
    shifted = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    scaled = torch.where(scaled.isposinf().any(dim=-1, keepdim=True), shifted, scaled)
    scaled = filter_logits(scaled, top_k, top_p)
    sampled = (scaled + gumbel_noise(keys, step, logits.shape[-1])).argmax(dim=-1)
    return torch.where(greedy, logits.argmax(dim=-1), sampled)


def image_keys(seed: int, first: int, count: int) -> torch.Tensor:
    """Noise keys of images first..first+count-1 of a request: image i samples as image 0 of seed + i."""
    return torch.arange(seed + first, seed + first + count, dtype=torch.long)
