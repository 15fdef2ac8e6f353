"""The pick: Gumbel-max over hashed noise samples softmax(logits / T), and its noise is a pure
function of (key, step, token), the same integers on any machine."""

from __future__ import annotations

import pytest
import torch

from janus_demo.sampling import choose_tokens, filter_logits, gumbel_noise, hashed_uniforms, image_keys

pytestmark = pytest.mark.seeds  # CI reruns these with the other CPU family's kernels (AVX2)

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
DRAWS = 20_000
# Fixed seeds make each test deterministic; the threshold says how unlikely the counts would be
# from a correct sampler. A wrong distribution (see the last test) lands far below it.
P_THRESHOLD = 1e-3


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of `counts` against `probs` (cells of zero probability
    must have zero counts; they carry no degree of freedom)."""
    possible = probs > 0
    assert counts[~possible].sum() == 0, "a token outside the allowed set was drawn"
    expected = probs[possible] * counts.sum()
    statistic = ((counts[possible] - expected) ** 2 / expected).sum()
    dof = int(possible.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic.double() / 2))


def draws_over_keys(temperature: float, top_k=None, top_p=None, *, seed: int = 1000, step: int = 3) -> torch.Tensor:
    """DRAWS picks, one per key seed..seed+DRAWS-1, at one step: counts per token."""
    logits = LOGITS.repeat(DRAWS, 1)
    picks = choose_tokens(logits, image_keys(seed, 0, DRAWS), step, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.bincount(picks, minlength=len(LOGITS)).double()


def expected_probs(temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    return filter_logits(LOGITS / temperature, top_k, top_p).softmax(-1).double()


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, None, None), (0.7, None, None), (1.3, 3, None), (1.0, None, 0.8), (0.5, 4, 0.9)],
)
def test_picks_over_keys_follow_softmax_of_logits_over_temperature(temperature, top_k, top_p):
    counts = draws_over_keys(temperature, top_k, top_p)
    assert chi_square_p(counts, expected_probs(temperature, top_k, top_p)) > P_THRESHOLD


def test_picks_over_steps_follow_softmax_and_consecutive_steps_are_independent():
    """One image's successive steps: the right marginal, and pairs (step s, step s+1) distributed
    as the product of marginals (a 6x6 table), so noise is not reused or correlated across steps."""
    steps = torch.arange(DRAWS + 1)  # one row per step of the same image (key 77)
    picks = choose_tokens(LOGITS.repeat(DRAWS + 1, 1), torch.full_like(steps, 77), steps, temperature=1.0)
    probs = LOGITS.softmax(-1).double()
    assert chi_square_p(torch.bincount(picks, minlength=6).double(), probs) > P_THRESHOLD
    pairs = torch.bincount(picks[:-1] * 6 + picks[1:], minlength=36).double()
    assert chi_square_p(pairs, torch.outer(probs, probs).flatten()) > P_THRESHOLD


def test_the_test_has_power_a_wrong_temperature_is_rejected():
    counts = draws_over_keys(1.0)
    assert chi_square_p(counts, expected_probs(0.8)) < P_THRESHOLD
    with pytest.raises(AssertionError, match="outside the allowed set"):
        chi_square_p(counts, expected_probs(1.0, top_k=5))  # the least likely token was drawn too


def test_temperature_zero_is_greedy_and_top_k_one_equals_it():
    logits = torch.randn(8, 16384, generator=torch.Generator().manual_seed(1))
    keys = image_keys(5, 0, 8)
    assert torch.equal(choose_tokens(logits, keys, 0, temperature=0), logits.argmax(-1))
    assert torch.equal(choose_tokens(logits, keys, 0, temperature=1.0, top_k=1), logits.argmax(-1))


def _mix32(x: int) -> int:
    """The hash, transcribed independently in plain Python integers."""
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x735A2D97) & 0xFFFFFFFF
    return x ^ (x >> 15)


def test_noise_is_the_documented_hash_bit_for_bit():
    keys = torch.tensor([0, 7, 2**31 - 1 + 16])  # the largest key: MAX_SEED + the 16th image
    uniforms = hashed_uniforms(keys, torch.tensor([575]), 16384)
    for row, key in enumerate(keys.tolist()):
        for token in (0, 1, 12345, 16383):
            bits = _mix32((_mix32((_mix32(key) + 575) & 0xFFFFFFFF) + token) & 0xFFFFFFFF) >> 9
            assert uniforms[row, token].item() == (bits + 0.5) / 2**23
    assert 0 < uniforms.min() and uniforms.max() < 1
    assert torch.isfinite(gumbel_noise(keys, 575, 16384)).all()


def test_a_rows_noise_depends_only_on_its_own_key_and_step():
    """What makes batches, chunks and shared loops draw alike: no other row, no RNG state."""
    keys = image_keys(1234, 0, 16)
    together = gumbel_noise(keys, torch.tensor([42]), 16384)
    for i in (0, 5, 15):
        assert torch.equal(gumbel_noise(keys[i : i + 1], 42, 16384)[0], together[i])
    assert not torch.equal(together[0], gumbel_noise(keys[:1], 43, 16384)[0])
    assert not torch.equal(together[0], together[1])
