"""Speed and memory of image generation (and understanding), side by side on the same weights.

    python benchmarks/bench_generation.py --arch small --num-images 4 --cfg-scale 5 --repeats 3

Compares, in one run, on the same model, prompt and seed:
  engine        janus_demo's loop (static cache; one CUDA graph per step on a GPU), previews on
  transformers  model.generate(generation_mode="image") then the VQ decode
  official      DeepSeek's demo loop transcribed onto the same modules (dynamic cache, multinomial)
and reports time per image, image tokens/s, time to first preview, peak memory, ratios, and on
CUDA the fraction of the memory-bandwidth floor (weights read once per step at the copy
bandwidth measured in this run). --understanding adds prefill and decode tokens/s of a chat
answer against model.generate. Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from janus_demo import load_engine  # noqa: E402
from janus_demo.generation import GenerationResult, ImageRequest  # noqa: E402
from janus_demo.presets import PRESETS  # noqa: E402
from janus_demo.token_loop import CACHE_KWARG  # noqa: E402

PROMPT = "A watercolor fox curled up in fresh snow, soft morning light"
SEED = 1234


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", help=f"random preset ({', '.join(PRESETS)}) or a model id/path")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: CUDA if present)")
    parser.add_argument("--dtype", default=None, help="LLM dtype (default: the engine's choice)")
    parser.add_argument("--quantize", default=None, help="int8 or nf4: the language model's linear layers (bitsandbytes)")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--cfg-scale", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (after a warm-up)")
    parser.add_argument("--only", nargs="+", default=["engine", "transformers", "official"],
                        choices=["engine", "transformers", "official"])
    parser.add_argument("--understanding", action="store_true", help="also time a chat answer")
    parser.add_argument("--new-tokens", type=int, default=64, help="answer length for --understanding")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


# ----- measuring ---------------------------------------------------------------------------
class PeakMemory:
    """Peak bytes above the starting point: CUDA's allocator peak, or peak RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS counter
            self.base = _status("VmRSS:")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.peak = _status("VmHWM:") - self.base


def _status(key: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- the three implementations -----------------------------------------------------------
STEADY = (64, 512)  # steps between which the engine's per-step time is read (no prefill, capture or decode)


def run_engine(engine, request: ImageRequest, preview_budget: float = 0.05) -> dict:
    started = time.perf_counter()
    first_preview = None
    at = {}
    total = 576
    for event in engine.generator.stream(request, preview_budget=preview_budget):
        if isinstance(event, GenerationResult):
            result = event
            continue
        total = event.total  # 576 per memory-sized chunk
        if event.step in STEADY:
            at[event.step] = time.perf_counter()  # the host runs at most 2 steps ahead of the GPU
        if event.preview is not None and first_preview is None:
            first_preview = time.perf_counter() - started
    step_s = (at[STEADY[1]] - at[STEADY[0]]) / (STEADY[1] - STEADY[0]) if len(at) == 2 else None
    return {"seconds": time.perf_counter() - started, "first_preview_s": first_preview, "tokens": result.tokens,
            "step_s": step_s, "chunks": total // 576, "graphs_used": engine.generator.graphs_used}


def run_transformers(engine, request: ImageRequest) -> dict:
    model, processor = engine.model, engine.processor
    conversation = [{"role": "user", "content": [{"type": "text", "text": request.prompt}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=[text], generation_mode="image", return_tensors="pt").to(model.device)
    n = request.num_images
    started = time.perf_counter()
    torch.manual_seed(request.seed)
    with torch.inference_mode():
        greedy = request.temperature == 0
        tokens = model.generate(
            input_ids=inputs.input_ids.repeat(n, 1) if greedy else inputs.input_ids,
            attention_mask=inputs.attention_mask.repeat(n, 1) if greedy else inputs.attention_mask,
            num_return_sequences=1 if greedy else n,
            generation_mode="image", do_sample=not greedy, top_k=None, guidance_scale=request.cfg_scale,
            **({} if greedy else {"temperature": request.temperature}),
        )
        engine.generator.decode(tokens)  # the same VQ decode as the engine's, so it costs the same
    sync(model.device)
    return {"seconds": time.perf_counter() - started, "first_preview_s": None, "tokens": tokens.cpu()}


def run_official(engine, request: ImageRequest) -> dict:
    """DeepSeek's demo `generate()` (app_januspro.py), transcribed onto transformers' modules."""
    from transformers import DynamicCache

    model = engine.model
    n = request.num_images
    input_ids = engine.generator.prompt_ids(request.prompt).to(model.device)
    started = time.perf_counter()
    torch.manual_seed(request.seed)
    with torch.inference_mode():
        tokens = torch.zeros((n * 2, len(input_ids)), dtype=torch.int, device=model.device)
        for i in range(n * 2):
            tokens[i, :] = input_ids
            if i % 2 != 0:
                tokens[i, 1:-1] = engine.generator.pad_id
        inputs_embeds = model.get_input_embeddings()(tokens)
        generated = torch.zeros((n, 576), dtype=torch.int, device=model.device)
        cache = DynamicCache(config=model.config.text_config)
        for i in range(576):
            hidden = model.model.language_model(inputs_embeds=inputs_embeds, use_cache=True, **{CACHE_KWARG: cache})
            logits = model.model.generation_head(hidden.last_hidden_state[:, -1, :])
            logit_cond, logit_uncond = logits[0::2, :], logits[1::2, :]
            logits = logit_uncond + request.cfg_scale * (logit_cond - logit_uncond)
            probs = torch.softmax(logits / request.temperature, dim=-1)
            next_token = torch.multinomial(probs, num_samples=1)
            generated[:, i] = next_token.squeeze(dim=-1)
            next_token = torch.cat([next_token.unsqueeze(dim=1), next_token.unsqueeze(dim=1)], dim=1).view(-1)
            inputs_embeds = model.prepare_embeddings_for_image_generation(next_token).unsqueeze(dim=1)
        engine.generator.decode(generated.long())
    sync(model.device)
    return {"seconds": time.perf_counter() - started, "first_preview_s": None, "tokens": generated.long().cpu()}


RUNNERS = {"engine": run_engine, "transformers": run_transformers, "official": run_official}


# ----- figures -----------------------------------------------------------------------------
def copy_bandwidth(device: torch.device) -> float:
    """Memory traffic of a device-to-device copy of 1 GiB, in bytes per second: it reads and writes
    every byte, so twice its size moves (the nearest measurable stand-in for reading weights)."""
    source = torch.empty(2**30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    sync(device)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        target.copy_(source)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() / best


def weight_bytes_per_step(model) -> int:
    """The weights every decoding step reads once: the language model's layers (not its text
    embedding table, which image steps never touch), the generation head and aligner."""
    parts = (model.model.language_model, model.model.generation_head, model.model.generation_aligner)
    skipped = set(map(id, model.model.language_model.embed_tokens.parameters()))
    return sum(p.numel() * p.element_size() for part in parts for p in part.parameters() if id(p) not in skipped)


def bench_images(engine, args) -> dict:
    device = engine.device
    request = ImageRequest(PROMPT, num_images=args.num_images, cfg_scale=args.cfg_scale, seed=SEED)
    results = {}
    for name in args.only:
        if name != "engine" and not request.uses_cfg:
            results[name] = {"skipped": "no CFG-free mode (transformers crashes at guidance_scale <= 1)"}
            continue
        RUNNERS[name](engine, ImageRequest(PROMPT, num_images=1, cfg_scale=args.cfg_scale, seed=SEED))  # warm-up
        runs, plain = [], []
        for _ in range(args.repeats):
            with PeakMemory(device) as memory:
                run = RUNNERS[name](engine, request)
            runs.append({**run, "peak_bytes": memory.peak})
            if name == "engine":  # previews off, run by turns with previews on so drift hits both alike
                plain.append(run_engine(engine, request, preview_budget=0)["seconds"])
        seconds = statistics.median(r["seconds"] for r in runs)
        previews = [r["first_preview_s"] for r in runs if r["first_preview_s"] is not None]
        results[name] = {
            "seconds": round(seconds, 3),
            "seconds_per_image": round(seconds / args.num_images, 3),
            "image_tokens_per_s": round(576 * args.num_images / seconds, 1),
            "first_preview_s": round(statistics.median(previews), 3) if previews else None,
            "peak_memory_mb": round(max(r["peak_bytes"] for r in runs) / 2**20, 1),
        }
        if plain:
            results[name]["preview_cost_fraction"] = round(seconds / statistics.median(plain) - 1, 3)
            results[name]["step_ms"] = round(1000 * statistics.median(r["step_s"] for r in runs), 3)
    if request.uses_cfg and "seconds" in results.get("engine", {}):  # what turning CFG off saves, same run
        no_cfg = replace(request, cfg_scale=1.0)
        run_engine(engine, no_cfg)  # warm-up
        cfg_one = statistics.median(run_engine(engine, no_cfg)["seconds"] for _ in range(args.repeats))
        results["engine"]["cfg_1_seconds"] = round(cfg_one, 3)
        results["engine"]["cfg_1_over_cfg"] = round(cfg_one / results["engine"]["seconds"], 3)
    for name in ("transformers", "official"):
        if "seconds" in results.get(name, {}) and "seconds" in results.get("engine", {}):
            results["engine"][f"speedup_vs_{name}"] = round(results[name]["seconds"] / results["engine"]["seconds"], 2)
    if device.type == "cuda" and "seconds" in results.get("engine", {}):
        bandwidth = copy_bandwidth(device)
        step_floor = weight_bytes_per_step(engine.model) / bandwidth
        results["bandwidth_floor"] = {
            "copy_gb_per_s": round(bandwidth / 1e9, 1), "floor_s": round(576 * step_floor, 3),
            "engine_fraction_of_floor": round(576 * step_floor / results["engine"]["seconds"], 3),  # whole request
            "step_fraction_of_floor": round(1000 * step_floor / results["engine"]["step_ms"], 3),  # decode steps only
        }
    greedy = ImageRequest(PROMPT, num_images=min(args.num_images, 2), cfg_scale=max(args.cfg_scale, 1.5),
                          temperature=0, seed=SEED)  # transformers needs CFG > 1
    results["greedy_tokens_equal_transformers"] = bool(
        torch.equal(run_engine(engine, greedy)["tokens"], run_transformers(engine, greedy)["tokens"])
    )
    return results


def bench_understanding(engine, args) -> dict:
    """Prefill and decode tokens/s of one greedy answer about an image, engine vs model.generate."""
    from PIL import Image

    image = Image.open(Path(__file__).resolve().parents[1] / "examples" / "chart.png")
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "Describe this chart in detail."}]}]
    prompt_tokens = engine.responder.inputs(messages)["input_ids"].shape[1]

    def engine_run(new_tokens):
        """Seconds for an answer of exactly `new_tokens` (EOS ignored, as `min_new_tokens` makes
        the reference do)."""
        config = engine.model.generation_config
        eos, config.eos_token_id = config.eos_token_id, None
        try:
            started = time.perf_counter()
            for _ in engine.chat(messages, temperature=0, max_new_tokens=new_tokens):
                pass
            return time.perf_counter() - started
        finally:
            config.eos_token_id = eos

    def reference_run(new_tokens):
        started = time.perf_counter()
        inputs = engine.processor.apply_chat_template(  # preprocessing counts for both
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(engine.device)
        with torch.inference_mode():
            engine.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        sync(engine.device)
        return time.perf_counter() - started

    engine_run(2), reference_run(2)  # warm-up
    decode_tokens = args.new_tokens - 1
    figures = {"prompt_tokens": prompt_tokens}
    for name, answer in (("engine", engine_run), ("transformers", reference_run)):
        prefill, total = answer(1), answer(args.new_tokens)  # one token = preprocessing and prefill
        figures[name] = {"prefill_tokens_per_s": round(prompt_tokens / prefill, 1),
                         "decode_tokens_per_s": round(decode_tokens / max(total - prefill, 1e-9), 1)}
    return figures


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def print_table(figures: dict) -> None:
    quantized = f" · {figures['quantize']}" if figures.get("quantize") else ""
    print(f"\n{figures['machine']} · {figures['arch']}{quantized} · {figures['num_images']} images · CFG {figures['cfg_scale']}")
    print(f"{'':14}{'s/image':>10}{'tok/s':>10}{'1st preview':>13}{'peak MB':>10}")
    for name in ("engine", "transformers", "official"):
        row = figures["images"].get(name)
        if row and "seconds" in row:
            preview = f"{row['first_preview_s']:.2f} s" if row["first_preview_s"] is not None else "none"
            print(f"{name:14}{row['seconds_per_image']:>10.3f}{row['image_tokens_per_s']:>10.1f}{preview:>13}"
                  f"{row['peak_memory_mb']:>10.0f}")
    engine = figures["images"].get("engine", {})
    for key in ("speedup_vs_transformers", "speedup_vs_official"):
        if key in engine:
            print(f"engine {key.replace('_', ' ')}: {engine[key]}x")
    if "cfg_1_over_cfg" in engine:
        print(f"engine at CFG 1: {engine['cfg_1_seconds']} s, {engine['cfg_1_over_cfg']}x the time at "
              f"CFG {figures['cfg_scale']}; decode step {engine['step_ms']} ms")
    if "preview_cost_fraction" in engine:
        print(f"previews cost {100 * engine['preview_cost_fraction']:.1f}% of the engine's time (vs previews off)")
    if "bandwidth_floor" in figures["images"]:
        floor = figures["images"]["bandwidth_floor"]
        print(f"bandwidth floor {floor['floor_s']} s at {floor['copy_gb_per_s']} GB/s: engine at "
              f"{100 * floor['engine_fraction_of_floor']:.0f}% of it (decode steps alone: "
              f"{100 * floor['step_fraction_of_floor']:.0f}%)")
    print(f"greedy tokens equal transformers': {figures['images']['greedy_tokens_equal_transformers']}")
    if "understanding" in figures:
        u = figures["understanding"]
        for name in ("engine", "transformers"):
            print(f"understanding {name:13} prefill {u[name]['prefill_tokens_per_s']:>8} tok/s   "
                  f"decode {u[name]['decode_tokens_per_s']:>8} tok/s   ({u['prompt_tokens']}-token prompt)")


def main(argv=None) -> int:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    name = f"random:{args.arch}" if args.arch in PRESETS else args.arch
    engine = load_engine(name, device=args.device, dtype=args.dtype, quantize=args.quantize)
    figures = {"machine": machine(engine.device), "arch": args.arch, "device": str(engine.device),
               "llm_dtype": str(engine.precision.llm), "quantize": args.quantize, "num_images": args.num_images, "cfg_scale": args.cfg_scale,
               "repeats": args.repeats, "images": bench_images(engine, args)}
    if args.understanding:
        figures["understanding"] = bench_understanding(engine, args)
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
