"""How the next token is picked, shared by the image loop and seeded chat.

Sampling is inverse-CDF with uniforms drawn from a per-image (or per-request) generator
rather than `torch.multinomial` on the global RNG stream. That makes a seed reproduce the
same tokens whether an image is generated alone, in a batch of 16, in memory-sized chunks,
or next to another user's request, and it keeps RNG calls out of the decode loop.
"""

from __future__ import annotations

import torch


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
    uniforms: torch.Tensor | None,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Pick one token per row: argmax when `temperature == 0`, else the uniform's inverse CDF.

    `logits` is (rows, vocab); `uniforms` is (rows,) in [0, 1). Probabilities are computed in
    float32 whatever the model dtype, so the CDF of a 16384-entry codebook stays accurate.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    scaled = logits / temperature
    # A tiny temperature (1e-40) overflows to +inf, whose softmax is NaN: such rows are shifted
    # to a maximum of 0 first. Other rows keep the plain formula, bit for bit (no host sync).
    shifted = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    scaled = torch.where(scaled.isposinf().any(dim=-1, keepdim=True), shifted, scaled)
    scaled = filter_logits(scaled, top_k, top_p)
    cdf = scaled.softmax(dim=-1).cumsum(dim=-1)
    targets = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)
    picked = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    return picked.clamp_(max=logits.shape[-1] - 1)


def image_uniforms(seed: int, index: int, steps: int) -> torch.Tensor:
    """The `steps` uniforms image `index` consumes, drawn up front on the CPU (device-independent).

    Image i of seed s draws what image 0 of seed s+i draws, so batches and chunks of a request
    sample alike. Tokens are then identical wherever the model's float results are; changing
    the number of rows can change matmul rounding (~1e-6 in fp32), which flips a draw only when
    a uniform lands on a CDF boundary.
    """
    generator = torch.Generator().manual_seed(seed + index)
    return torch.rand(steps, generator=generator)
