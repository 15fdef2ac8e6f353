"""Text-to-image: proven equal to transformers' generate and to the original algorithm."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from transformers import Cache, DynamicCache, StaticCache

from janus_demo import Cancelled, GenerationResult, ImageRequest, InputError
from janus_demo.generation import PreviewBudget
from janus_demo.images import read_png_params
from janus_demo.sampling import gumbel_noise, image_keys
from janus_demo.token_loop import CACHE_KWARG

# @pytest.mark.seeds: CI reruns the test with the other CPU family's kernels (AVX2).

def reference_prompt_inputs(engine, prompt: str):
    """Inputs the way transformers' docs build them for image generation (the text as a batch of
    one: before 5.22 the Janus processor split a plain string into one row per character)."""
    processor = engine.processor
    conversation = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return processor(text=[text], generation_mode="image", return_tensors="pt")


@pytest.mark.seeds
@pytest.mark.parametrize(
    ("prompt", "num_images", "cfg_scale"),
    [("a red cat", 1, 5.0), ("a red cat", 3, 5.0), ("two dogs on a big boat at night", 2, 2.5)],
)
def test_greedy_tokens_equal_transformers_generate(lively_engine, prompt, num_images, cfg_scale):
    engine = lively_engine
    inputs = reference_prompt_inputs(engine, prompt)
    # generate() refuses greedy with num_return_sequences > 1, so repeat the prompt instead. Its own
    # static cache, handed over: 5.17's generate fails building it (an upstream bug, fixed in 5.18).
    expected = engine.model.generate(
        input_ids=inputs.input_ids.repeat(num_images, 1),
        attention_mask=inputs.attention_mask.repeat(num_images, 1),
        generation_mode="image",
        do_sample=False,
        guidance_scale=cfg_scale,
        **{CACHE_KWARG: StaticCache(config=engine.model.config.get_text_config(decoder=True),
                                    max_cache_len=inputs.input_ids.shape[1] + 576)},
    )
    result = engine.generate_images(prompt, num_images=num_images, cfg_scale=cfg_scale, temperature=0, seed=0)
    assert result.tokens.shape == (num_images, 576)
    assert result.tokens.dtype == torch.long
    assert torch.equal(result.tokens, expected)
    assert len(set(result.tokens[0].tolist())) > 150, "varied tokens: an equality that proves something"


def test_the_image_prompt_is_the_original_one(engine):
    """DeepSeek's image prompt, token for token (on transformers < 5.22 a plain string given to the
    processor became one row per character, and row 0 was BOS, '<' and <begin_of_image>)."""
    ids = engine.generator.prompt_ids("a red cat")
    expected = "<｜begin▁of▁sentence｜><|User|>: a red cat\n\n<|Assistant|>:<begin_of_image>"
    assert engine.processor.tokenizer.decode(ids) == expected
    assert ids.tolist() == engine.processor.tokenizer(expected[len("<｜begin▁of▁sentence｜>"):]).input_ids


def original_algorithm_picks(model, prompt_ids, tokens, *, pad_id, cfg_scale, temperature, seed):
    """DeepSeek's generation script, transcribed (interleaved cond/uncond rows, a dynamic KV
    cache, softmax(logits / T)), with OUR draw in place of its `torch.multinomial`: Gumbel-max
    with the hashed noise of sampling.py, image i keyed seed + i. The draw itself is proven to
    sample softmax(logits / T) by the statistical tests in test_sampling.py; this test proves
    the loop around it. `cfg_scale=None` keeps only the conditional rows (what cfg 1 means).

    It is teacher-forced with `tokens` (the engine's output) and returns, for every step and
    image, its own pick and the gap between the two best perturbed scores. Row order and cache
    layout change float rounding by ~1e-6, which may flip a pick only at such a near-tie;
    forcing keeps a flip from cascading, and the gap shows it was one.
    """
    num_images = tokens.shape[0]
    rows_per_image = 1 if cfg_scale is None else 2
    rows = prompt_ids.repeat(num_images * rows_per_image, 1)
    if cfg_scale is not None:
        rows[1::2, 1:-1] = pad_id
    embeds = model.get_input_embeddings()(rows)
    keys = torch.arange(seed, seed + num_images)
    picks = torch.zeros((num_images, 576), dtype=torch.long)
    gaps = torch.zeros((num_images, 576))
    cache = DynamicCache(config=model.config.text_config)
    for step in range(576):
        hidden = model.model.language_model(inputs_embeds=embeds, use_cache=True, **{CACHE_KWARG: cache})
        logits = model.model.generation_head(hidden.last_hidden_state[:, -1, :])
        if cfg_scale is not None:
            cond, uncond = logits[0::2], logits[1::2]
            logits = uncond + cfg_scale * (cond - uncond)
        scores = logits.float() / temperature + gumbel_noise(keys, step, logits.shape[-1])
        best = scores.topk(2, dim=-1).values
        picks[:, step] = scores.argmax(dim=-1)
        gaps[:, step] = best[:, 0] - best[:, 1]
        forced = tokens[:, step].repeat_interleave(rows_per_image).unsqueeze(1)
        embeds = model.prepare_embeddings_for_image_generation(forced)
    return picks, gaps


def assert_same_draws(result_tokens, picks, gaps):
    differ = result_tokens != picks
    assert differ.sum() <= 2, f"{int(differ.sum())} draws differ"
    assert bool((gaps[differ] < 1e-4).all()), "a differing draw was not a float-rounding tie"
    assert len(set(result_tokens[0].tolist())) > 100  # really sampled, not a constant


@pytest.mark.seeds
@pytest.mark.parametrize(("num_images", "cfg_scale", "temperature"), [(2, 5.0, 1.0), (3, 3.0, 0.7), (2, None, 1.0)])
def test_seeded_sampling_equals_deepseek_loop_with_our_gumbel_draw(engine, num_images, cfg_scale, temperature):
    prompt = "a lighthouse on a cliff, watercolor"
    result = engine.generate_images(
        prompt, num_images=num_images, cfg_scale=cfg_scale or 1.0, temperature=temperature, seed=11
    )
    with torch.inference_mode():
        picks, gaps = original_algorithm_picks(
            engine.model,
            reference_prompt_inputs(engine, prompt).input_ids[0],
            result.tokens,
            pad_id=engine.generator.pad_id,
            cfg_scale=cfg_scale,
            temperature=temperature,
            seed=11,
        )
    assert_same_draws(result.tokens, picks, gaps)


def count_rows(engine, monkeypatch) -> list[int]:
    """Record the batch size of every language-model call."""
    language_model = engine.model.model.language_model
    seen: list[int] = []
    original_forward = language_model.forward

    def forward(*args, **kwargs):
        seen.append(kwargs["inputs_embeds"].shape[0])
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(language_model, "forward", forward)
    return seen


def test_cfg_one_runs_without_unconditional_rows(engine, monkeypatch):
    rows = count_rows(engine, monkeypatch)
    engine.generate_images("a cat", num_images=3, cfg_scale=1.0, seed=5)
    assert rows == [3] * 576
    rows.clear()
    engine.generate_images("a cat", num_images=3, cfg_scale=5.0, seed=5)
    assert rows == [6] * 576


@pytest.mark.seeds
def test_same_seed_same_tokens_and_batch_invariance(engine):
    first = engine.generate_images("a blue bird", num_images=3, seed=1234)
    again = engine.generate_images("a blue bird", num_images=3, seed=1234)
    other = engine.generate_images("a blue bird", num_images=3, seed=1235)
    assert torch.equal(first.tokens, again.tokens)
    assert first.seed == 1234
    assert not torch.equal(first.tokens, other.tokens)
    # Image i of seed s is image 0 of seed s + i: a different batch samples the same images.
    # Exact, not a bound, on any CPU: with Gumbel-max another batch shape flips a pick only when
    # the two best perturbed scores are closer than the rounding change. On this tiny model the
    # CFG logits of a batch and of one image differ by at most 2e-7 (measured, both kernel sets)
    # while the top-two gap is spread like Exp(1): about 576 * 2e-7 = 1e-4 flips per image.
    assert torch.equal(other.tokens[:2], first.tokens[1:])
    pair = engine.generate_images("a blue bird", num_images=2, seed=1234)
    assert torch.equal(pair.tokens, first.tokens[:2])


@pytest.mark.seeds
def test_sixteen_peaked_images_drawn_alone_equal_their_batch_up_to_a_rare_tie(lively_engine):
    """The lively model's logits are 8x larger, and so is their rounding change between batch
    shapes (median 2e-5, measured): about 576 * 2e-5 = 1% of images may meet a near-tie that
    flips one pick (and the image from there on). A bound, not equality: at least 14 of 16
    identical fails on a correct sampler with probability ~1e-3 (3 or more flips of 16 at 1%),
    while a sampler whose rows depend on each other (one RNG stream, as torch.multinomial
    draws) fails it outright."""
    batch = lively_engine.generate_images("a red fox in the snow", num_images=16, seed=500)
    alone = [lively_engine.generate_images("a red fox in the snow", num_images=1, seed=500 + i).tokens[0]
             for i in range(16)]
    identical = sum(torch.equal(batch.tokens[i], alone[i]) for i in range(16))
    assert identical >= 14, f"only {identical} of 16 images equal to the same image drawn alone"
    assert len(set(batch.tokens[0].tolist())) > 150  # peaked but varied: the equality proves something


def test_random_seed_is_reported_and_reproduces(engine):
    result = engine.generate_images("a tree", num_images=1, seed=None)
    assert isinstance(result.seed, int) and 0 <= result.seed <= 2**31 - 1
    again = engine.generate_images("a tree", num_images=1, seed=result.seed)
    assert torch.equal(result.tokens, again.tokens)


def test_negative_prompt_replaces_unconditional_rows(engine):
    generator = engine.generator
    plain = generator.rows(_request("a cat"), 2)[0]
    negative = generator.rows(_request("a cat", negative_prompt="blurry, low quality, watermark"), 2)[0]
    cond = generator.prompt_ids("a cat")
    neg = generator.prompt_ids("blurry, low quality, watermark")
    # Unconditional rows: BOS and <begin_of_image> kept, the rest padding ...
    assert plain.shape == (4, len(cond))
    assert plain[2, 0] == generator.bos_id and plain[2, -1] == generator.boi_id
    assert set(plain[2, 1:-1].tolist()) == {generator.pad_id}
    # ... or, with a negative prompt, exactly that prompt (left-padded to a common length).
    width = max(len(cond), len(neg))
    assert negative.shape == (4, width)
    assert negative[2, width - len(neg) :].tolist() == neg.tolist()
    assert negative[0, width - len(cond) :].tolist() == cond.tolist()
    with_negative = engine.generate_images("a cat", num_images=1, seed=9, negative_prompt="blurry, low quality")
    without = engine.generate_images("a cat", num_images=1, seed=9)
    assert not torch.equal(with_negative.tokens, without.tokens)


def _request(prompt, **kwargs):
    return ImageRequest(prompt=prompt, **kwargs)


def test_top_k_restricts_choices(engine):
    result = engine.generate_images("a cat", num_images=1, seed=2, top_k=1)
    greedy = engine.generate_images("a cat", num_images=1, temperature=0)
    assert torch.equal(result.tokens, greedy.tokens)  # top-1 sampling is greedy decoding


def test_progress_and_previews(engine):
    events = []
    result = engine.generate_images(
        "a house", num_images=2, seed=4, on_progress=lambda step, total, preview: events.append((step, total, preview))
    )
    assert [e[0] for e in events] == list(range(1, 577))
    assert {e[1] for e in events} == {576}
    previews = [(step, preview) for step, _, preview in events if preview is not None]
    assert previews, "at least one preview is shown"
    assert all(step % 24 == 0 for step, _ in previews)  # made when a row of tokens is complete
    step, first = previews[0]
    assert len(first) == 2 and all(im.size == (384, 384) and im.mode == "RGB" for im in first)
    # The finished rows are drawn; the rest of the canvas is still neutral gray.
    rows_done = step // 24
    assert first[0].getpixel((200, 383)) == (127, 127, 127)
    assert first[0].crop((0, 0, 384, rows_done * 16)).getcolors(10) is None  # many colours: real content
    assert len(result.images) == 2


def test_preview_budget_zero_turns_previews_off_without_changing_tokens(engine):
    events = list(engine.iter_images("a house", num_images=2, seed=4, preview_budget=0))
    assert not [e for e in events[:-1] if e.preview is not None] and len(events) == 577
    assert torch.equal(events[-1].tokens, engine.generate_images("a house", num_images=2, seed=4).tokens)


@pytest.mark.seeds
def test_preview_of_all_rows_is_the_final_image(engine):
    result = engine.generate_images("a boat", num_images=1, seed=8)
    full = engine.generator.preview(result.tokens)
    assert full[0].tobytes() == result.images[0].tobytes()


@pytest.mark.seeds
def test_images_are_384_rgb_and_decoded_like_the_original(engine):
    result = engine.generate_images("a horse", num_images=2, seed=6)
    assert [im.size for im in result.images] == [(384, 384)] * 2
    assert all(im.mode == "RGB" for im in result.images)
    with torch.inference_mode():  # image 1 decoded by itself, as the engine does (the decoder rounds per batch size)
        decoded = engine.model.decode_image_tokens(result.tokens[1:2]).float().numpy()
    import numpy as np

    expected = np.clip((decoded + 1) / 2 * 255, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(result.images[1]), expected[0])


def test_cancel_stops_within_one_step_and_frees_the_cache(engine, monkeypatch):
    caches = []
    original_init = Cache.__init__

    def tracking_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        caches.append(weakref.ref(self))

    monkeypatch.setattr(Cache, "__init__", tracking_init)
    stop = threading.Event()
    steps = []

    def on_progress(step, total, preview):
        steps.append(step)
        if step == 100:
            stop.set()

    with pytest.raises(Cancelled) as stopped:
        engine.generate_images("a dragon", num_images=2, seed=1, on_progress=on_progress, cancel=stop)
    assert steps[-1] == 100  # not a single step after the request to stop
    gc.collect()
    # Checked while the traceback (and every frame in it) is still alive: the cache must go anyway.
    assert stopped.value.__traceback__ is not None
    assert caches and all(ref() is None for ref in caches)


def test_cancel_during_the_final_decode_stops_before_the_next_image(engine, monkeypatch):
    stop = threading.Event()
    original = engine.model.decode_image_tokens
    calls = []

    def decode_then_stop(tokens):
        calls.append(len(tokens))
        stop.set()  # Stop pressed while the first image is being decoded
        return original(tokens)

    monkeypatch.setattr(engine.model, "decode_image_tokens", decode_then_stop)
    with pytest.raises(Cancelled):
        engine.generate_images("a dragon", num_images=8, seed=1, cancel=stop)
    assert calls == [1], "the other 7 images were not decoded"


def test_cancel_accepts_a_callable(engine):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 10

    with pytest.raises(Cancelled):
        engine.generate_images("a dragon", num_images=1, cancel=should_stop)
    assert len(calls) == 11


def test_engine_still_works_after_cancel(engine):
    with pytest.raises(Cancelled):
        engine.generate_images("x", num_images=1, cancel=lambda: True)
    assert isinstance(engine.generate_images("x", num_images=1, seed=1), GenerationResult)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"num_images": 0}, "num_images"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"temperature": -1}, "temperature"),
        ({"seed": -5}, "seed"),
        ({"top_p": 0}, "top_p"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(engine, options, message):
    options = {"prompt": "a cat", **options}
    with pytest.raises(InputError, match=message):
        engine.generate_images(options.pop("prompt"), **options)


def test_result_saves_pngs_with_parameters(engine, tmp_path):
    result = engine.generate_images("a small robot", num_images=2, seed=77, cfg_scale=4.0, temperature=0.9)
    paths = result.save(tmp_path)
    assert [p.name for p in paths] == ["janus_77_0.png", "janus_77_1.png"]
    params = read_png_params(paths[1])
    assert params["prompt"] == "a small robot"
    assert params["seed"] == 77 and params["image_index"] == 1 and params["num_images"] == 2
    assert params["cfg_scale"] == 4.0 and params["temperature"] == 0.9
    assert params["model"] == "random:tiny"
    # The stored parameters regenerate that very image.
    options = {k: params.get(k) for k in ("num_images", "seed", "cfg_scale", "temperature", "top_k", "top_p")}
    again = engine.generate_images(params["prompt"], **options)
    assert torch.equal(again.tokens[params["image_index"]], result.tokens[1])


def test_decode_step_only_updates_its_buffers_in_place(engine):
    """What makes the CUDA-graph replay valid: after the prefill, a step changes the contents of
    fixed tensors (same storage), never which tensors they are."""
    from janus_demo.token_loop import TokenLoop

    ids, mask = engine.generator.rows(ImageRequest("a cat", num_images=2), 2)
    loop = TokenLoop(engine.model, ids, mask, keys=image_keys(3, 0, 2), cfg_scales=[5.0] * 2, temperatures=[1.0] * 2,
                     top_k=None, top_p=None, num_tokens=576, fixed_shapes=True)  # the CUDA-graph step, run eagerly
    steps = loop.steps(use_cuda_graph=False)
    next(steps)

    def buffers():
        tensors = [loop.embeds, loop.positions, loop.mask, loop.step, loop.tokens, loop.keys]
        tensors += [t for layer in loop.cache.layers for t in (layer.keys, layer.values, layer.cumulative_length)]
        return [(t.data_ptr(), tuple(t.shape)) for t in tensors]

    before = buffers()
    step_before = loop.step.item()
    next(steps)
    next(steps)
    assert buffers() == before
    assert loop.step.item() == step_before + 2
    steps.close()


def loop_tokens(engine, *, cfg_scale: float = 5.0, fixed_shapes: bool = True, use_cuda_graph: bool = False):
    """Tokens of a 2-image TokenLoop run here on the CPU, with the GPU's fixed shapes or the CPU's."""
    from janus_demo.token_loop import TokenLoop

    ids, mask = engine.generator.rows(ImageRequest("a lighthouse in a storm", num_images=2, cfg_scale=cfg_scale), 2)
    loop = TokenLoop(engine.model, ids, mask, keys=image_keys(11, 0, 2), cfg_scales=[cfg_scale] * 2, temperatures=[1.0] * 2,
                     top_k=None, top_p=None, num_tokens=576, fixed_shapes=fixed_shapes)
    with torch.inference_mode():
        for _ in loop.steps(use_cuda_graph=use_cuda_graph):
            pass
    return loop.tokens


def test_a_failed_cuda_graph_capture_falls_back_to_eager(engine, monkeypatch, caplog):
    from janus_demo import token_loop

    class BrokenGraph:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("operation not permitted when stream is capturing")

    class FakeStream:
        device = torch.device("cuda")

        def wait_stream(self, other):
            pass

    monkeypatch.setattr(token_loop, "_graphs_broken", False)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", BrokenGraph)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream())
    monkeypatch.setattr(token_loop.TokenLoop, "_on_stream", staticmethod(lambda stream, work: work()))
    # The whole CUDA-graph path of the loop (warm-up, failed capture) on the CPU: the same tokens.
    tokens = [loop_tokens(engine, use_cuda_graph=use_cuda_graph) for use_cuda_graph in (True, False)]
    assert torch.equal(tokens[0], tokens[1])
    assert "decoding eagerly" in caplog.text
    assert not token_loop.cuda_graphs_wanted(torch.device("cuda"))  # and later requests skip capture
    monkeypatch.setattr(token_loop, "_graphs_broken", False)
    monkeypatch.setenv("JANUS_CUDA_GRAPHS", "0")
    assert not token_loop.cuda_graphs_wanted(torch.device("cuda"))
    monkeypatch.delenv("JANUS_CUDA_GRAPHS")
    assert token_loop.cuda_graphs_wanted(torch.device("cuda")) and not token_loop.cuda_graphs_wanted(torch.device("cpu"))


def test_preview_budget_keeps_previews_within_their_fraction(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("janus_demo.generation.time.perf_counter", lambda: clock[0])
    budget = PreviewBudget(0.05)
    clock[0] = 1.0
    assert budget.allows(1)  # the first preview (one row) is free to come early
    with budget.timing(1):
        clock[0] += 0.04  # 0.04 s a row
    clock[0] = 0.04 + 1.5  # 1.5 s decoding allows 0.075 s: two rows more would make 0.04 + 0.08
    assert not budget.allows(2)
    clock[0] = 0.04 + 2.5  # 2.5 s allows 0.125 s: two rows fit, three (0.04 + 0.12) do not
    assert budget.allows(2) and not budget.allows(3)
    assert not PreviewBudget(0).allows(1)


@pytest.mark.seeds
@pytest.mark.parametrize("cfg_scale", [5.0, 1.0])
def test_the_gpu_shaped_step_gives_the_same_tokens_as_the_cpu_step(engine, cfg_scale):
    """On a GPU every step attends over the whole static cache (fixed shapes for the CUDA graph);
    on the CPU only over the filled slots. Run eagerly here, both choose the same tokens."""
    from janus_demo.token_loop import TokenLoop

    gpu_shaped = loop_tokens(engine, cfg_scale=cfg_scale, fixed_shapes=True)
    assert torch.equal(gpu_shaped, loop_tokens(engine, cfg_scale=cfg_scale, fixed_shapes=False))
    ids, mask = engine.generator.rows(ImageRequest("a cat", num_images=1), 1)
    loop = TokenLoop(engine.model, ids, mask, keys=image_keys(0, 0, 1), cfg_scales=[5.0], temperatures=[1.0],
                     top_k=None, top_p=None, num_tokens=576, fixed_shapes=False)
    with pytest.raises(ValueError, match="fixed_shapes"):
        next(loop.steps(use_cuda_graph=True))


def test_tiny_temperatures_pick_the_most_likely_token_instead_of_overflowing():
    from janus_demo.sampling import choose_tokens

    logits = torch.randn(3, 16384, generator=torch.Generator().manual_seed(0)) * 20
    for temperature in (1e-40, 1e-30, 1e-12):
        picked = choose_tokens(logits, image_keys(5, 0, 3), 7, temperature=temperature)
        assert torch.equal(picked, logits.argmax(-1)), temperature
