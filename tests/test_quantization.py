"""Low-memory loading (--quantize int8 | nf4) on the CPU, where bitsandbytes runs too."""

from __future__ import annotations

import logging

import pytest
import torch

from janus_demo import LoadError, load_engine
from janus_demo.loading import JANUS_PRO_1B, JANUS_PRO_7B, Precision, model_for, weights_on_device
from janus_demo.presets import PRESETS, build_config, build_tokenizer
from janus_demo.quantization import NOT_QUANTIZED, check_mode

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module", params=["int8", "nf4"])
def quantized(request):
    return request.param, load_engine("tiny-random", device="cpu", quantize=request.param)


def test_only_the_language_models_linear_layers_are_quantized(quantized):
    mode, engine = quantized
    layer_type = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
    model = engine.model
    language = model.model.language_model
    swapped = [m for m in language.modules() if isinstance(m, layer_type)]
    assert len(swapped) == 7 * len(language.layers)  # q, k, v, o, gate, up, down
    assert not any(type(m) is torch.nn.Linear for m in language.modules())
    assert language.layers[0].mlp.up_proj.weight.dtype == (torch.int8 if mode == "int8" else torch.uint8)
    for name in NOT_QUANTIZED:  # every skipped module exists and kept its full-precision layers
        part = model.get_submodule(name)
        assert not any(isinstance(m, layer_type) for m in part.modules()), name
        assert all(p.dtype == torch.float32 for p in part.parameters()), name
    assert language.rotary_emb.inv_freq.dtype == torch.float32
    assert engine.precision.quantize == mode


def test_quantized_model_draws_and_chats(quantized):
    mode, engine = quantized
    result = engine.generate_images("a red fox in the snow", num_images=1, seed=3)
    assert result.images[0].size == (384, 384) and result.tokens.shape == (1, 576)
    assert int(result.tokens.max()) < 16384
    again = engine.generate_images("a red fox in the snow", num_images=1, seed=3)
    assert torch.equal(again.tokens, result.tokens)  # seeds still reproduce
    answer = "".join(engine.chat([{"role": "user", "content": "Describe a cat."}], temperature=0, max_new_tokens=6))
    assert answer.strip()


def test_unknown_quantization_is_one_sentence():
    with pytest.raises(LoadError) as caught:
        load_engine("tiny-random", device="cpu", quantize="int4")
    assert str(caught.value) == "Unknown quantization 'int4'; use int8, nf4, or leave it off."
    assert check_mode(None) is None and check_mode("NF4") == "nf4" and check_mode("none") is None


@pytest.mark.parametrize(
    ("free_gib", "quantize", "expected"),
    [(16, None, JANUS_PRO_1B), (16, "int8", JANUS_PRO_7B), (14, "int8", JANUS_PRO_1B), (14, "nf4", JANUS_PRO_7B),
     (11, "nf4", JANUS_PRO_1B), (24, None, JANUS_PRO_7B)],
)
def test_default_model_takes_quantization_into_account(free_gib, quantize, expected):
    name, reason = model_for(int(free_gib * 2**30), quantize)
    assert name == expected
    assert (quantize or "GiB") in reason  # the logged reason names the mode


def test_memory_estimate_of_quantized_7b_weights():
    """7B is ~14.8 GB in bf16 (its checkpoint's size); nf4 must bring it near the 6.5 GB peers
    report, int8 near 8.7 GB."""
    config = build_config(PRESETS["janus-pro-7b"], build_tokenizer())
    stored = int(14.8e9)
    sizes = {mode: weights_on_device(stored, config.text_config, Precision(torch.bfloat16, torch.bfloat16,
                                                                          torch.bfloat16, mode))
             for mode in (None, "int8", "nf4")}
    assert sizes[None] == stored
    assert 8.0e9 < sizes["int8"] < 9.5e9
    assert 5.0e9 < sizes["nf4"] < 6.8e9


def test_cli_and_app_take_quantize():
    import app
    from janus_demo.__main__ import build_parser

    assert build_parser().parse_args(["generate", "x", "--quantize", "nf4"]).quantize == "nf4"
    assert app.parse_args(["--quantize", "int8"]).quantize == "int8"


def test_cli_refuses_an_unknown_quantization(capsys):
    from janus_demo.__main__ import main

    assert main(["generate", "x", "--model", "tiny-random", "--device", "cpu", "--quantize", "fp3", "-q"]) == 1
    assert capsys.readouterr().err.strip() == "error: Unknown quantization 'fp3'; use int8, nf4, or leave it off."


def test_quantized_loading_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="janus_demo"):
        load_engine("tiny-random", device="cpu", quantize="nf4")
    assert "linear layers in nf4" in caplog.text and "lm_head" in caplog.text
    assert "--quantize nf4 or int8 makes each step" not in caplog.text  # the hint is for unquantized CPU runs


def test_an_unquantized_cpu_load_points_to_quantization(caplog):
    """bench_quantize.py: on a CPU int8 and nf4 decode 2-8x faster, so a CPU user is told at start-up."""
    with caplog.at_level(logging.INFO, logger="janus_demo"):
        load_engine("tiny-random", device="cpu")
    assert "On a CPU, --quantize nf4 or int8 makes each step several times faster" in caplog.text
