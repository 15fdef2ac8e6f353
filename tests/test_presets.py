"""The offline random Janus: real geometry, every special token, deterministic, cached."""

from __future__ import annotations

import torch

from janus_demo import presets


def test_tiny_has_the_real_geometry(engine):
    config = engine.model.config
    assert config.vision_config.image_size == 384 and config.vision_config.patch_size == 16
    assert config.vision_config.num_image_tokens == 576
    assert config.vq_config.num_patches == 24 and config.vq_config.num_embeddings == 16384
    assert engine.model.model.generation_head.vision_head.out_features == 16384
    assert engine.processor.num_image_tokens == 576
    with torch.inference_mode():
        pixels = engine.model.decode_image_tokens(torch.zeros((1, 576), dtype=torch.long))
    assert pixels.shape == (1, 384, 384, 3)
    # Tiny widths: a few million parameters, most of them the 16384-way generation head.
    assert sum(p.numel() for p in engine.model.parameters()) < 3_000_000


def test_tokenizer_has_every_janus_special_token(engine):
    tokenizer = engine.processor.tokenizer
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in presets.SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(presets.SPECIAL_TOKENS)
    assert tokenizer.bos_token == presets.BOS and tokenizer.eos_token == presets.EOS
    assert tokenizer.pad_token == presets.PAD
    assert (tokenizer.image_token, tokenizer.boi_token, tokenizer.eoi_token) == (presets.IMAGE, presets.BOI, presets.EOI)
    assert engine.model.config.image_token_id == ids[presets.IMAGE]
    # Each special token is one token, and BOS is prepended like the DeepSeek tokenizer does.
    encoded = tokenizer("<|User|>: hi<begin_of_image>").input_ids
    assert encoded[0] == ids[presets.BOS] and ids[presets.USER] in encoded and encoded[-1] == ids[presets.BOI]
    assert tokenizer.decode(tokenizer("A red cat sat.", add_special_tokens=False).input_ids) == "A red cat sat."


def test_build_is_deterministic():
    first, processor_a = presets.build_model("tiny")
    second, processor_b = presets.build_model("tiny")
    state_a, state_b = first.state_dict(), second.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert processor_a.tokenizer.get_vocab() == processor_b.tokenizer.get_vocab()
    other, _ = presets.build_model("tiny", seed=1)
    assert not torch.equal(other.lm_head.weight, first.lm_head.weight)


def test_build_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    presets.build_model("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_is_cached_on_disk(engine):
    folder = presets.ensure_on_disk("tiny")
    assert str(folder) == engine.model.name_or_path
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert presets.ensure_on_disk("tiny") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert folder.parent == presets.cache_root()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_small_preset_loads_and_generates():
    from janus_demo import load_engine

    small = load_engine("random:small", device="cpu")
    assert small.model.config.text_config.hidden_size == 512
    result = small.generate_images("a cat", num_images=1, seed=1, cfg_scale=1.0)
    assert result.tokens.shape == (1, 576) and result.images[0].size == (384, 384)
