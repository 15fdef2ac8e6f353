"""The GPU proof, prepared to run in one short call: speed, bandwidth, greedy agreement, chat, small cards.

    python benchmarks/gpu_check.py                   # on an H100/H200: 7B, ~7 minutes (--budget-s 400)
    python benchmarks/gpu_check.py --models janus-pro-1b --budget-s 200   # then 1B, in a second call
    python benchmarks/gpu_check.py --dry-run         # the same code on the CPU with the tiny preset
    CUBLAS_WORKSPACE_CONFIG=:4096:8 python benchmarks/gpu_check.py --sections determinism --out cublas.json

What it measures, on random weights with the real shapes (random:janus-pro-7b, then -1b, bf16):
  speed   the engine with its CUDA graph, the engine eager (JANUS_CUDA_GRAPHS=0), transformers'
          generate(generation_mode="image") and DeepSeek's loop, at 1, 4 and 16 images: seconds
          per image, fraction of the memory-bandwidth floor, time to first preview, peak memory,
          and whether the graph was used
  greedy  greedy tokens of the graph, eager and transformers paths: equal, or the share that is
  seeds   the sampling noise equals the CPU's; a request repeats itself; images 0-3 drawn alone
          vs in a batch of 4 and of 16 (bf16 kernels are chosen per batch size)
  determinism  one greedy image's first rows twice by the graph, the graph with the GPU settled
          after every step, eagerly and eagerly with plain attention: which path repeats itself
          bitwise, and the first step and layer whose cached keys differ; then whole requests
  chat    prefill and decode tokens/s of an answer about an image, engine vs model.generate
  cards   7B in bf16 and in nf4 on simulated 24, 16 and 12 GB cards (a per-process memory cap):
          the planner's chunks at every slider setting, and its largest single loop and the
          largest request run to the end
It prints one table and writes JSON (--out; by default $OUT/gpu_check.json where $OUT is set),
rewritten after every section, so a run cut short still reports what it measured; runs that
would start after --budget-s are skipped and say so. A row that cannot run on the installed
versions (transformers 5.17's image generate, bitsandbytes missing) says why, and the rest goes
on. Imports neither gradio nor spaces.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel

import bench_generation as bench  # this folder; it puts the repository root on sys.path
from janus_demo import OutOfMemory, load_engine, quantization, token_loop  # noqa: E402
from janus_demo.generation import ImageRequest, Slice  # noqa: E402
from janus_demo.sampling import gumbel_noise, hashed_uniforms, image_keys  # noqa: E402
from janus_demo.memory import RESERVE_BYTES, SAFETY, is_out_of_memory, plan_chunks, release_memory, request_memory  # noqa: E402

GIB = 2**30
CARD_OVERHEAD_GIB = 1  # what a real card keeps from PyTorch: CUDA context, display, other processes
IMPLEMENTATIONS = ("engine_graph", "engine_eager", "official", "transformers")
SECTIONS = ("speed", "greedy", "seeds", "determinism", "chat", "cards_bf16", "nf4")


@dataclass(frozen=True)
class Plan:
    """What to run. The first model also gets the simulated cards and nf4."""

    device: str
    dtype: str
    models: tuple[str, ...]
    sizes: tuple[int, ...]
    cards_gib: tuple[int, ...]
    max_images: int  # the slider's top
    new_tokens: int  # chat answer length
    budget_s: float


GPU = Plan("cuda", "bf16", ("janus-pro-7b", "janus-pro-1b"), (1, 4, 16), (24, 16, 12), 16, 64, 400)
DRY = Plan("cpu", "fp32", ("tiny",), (1,), (12,), 2, 4, 900)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU, tiny preset, 1 image")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default $OUT/gpu_check.json or ./gpu_check.json)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no run after this many seconds")
    parser.add_argument("--models", nargs="+", default=None, help="a subset of the presets, for a rerun")
    parser.add_argument("--sections", nargs="+", default=None, choices=SECTIONS, help="a subset of the sections, for a rerun")
    return parser.parse_args(argv)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def spent(self) -> bool:
        return self.elapsed() > self.seconds


SKIPPED = {"skipped": "time budget spent"}


def failure(exc: BaseException) -> dict:
    """Why a row has no figures; the process goes on."""
    kind = "out of memory" if isinstance(exc, OutOfMemory) or is_out_of_memory(exc) else "unavailable"
    return {kind: f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}


@contextlib.contextmanager
def graphs(enabled: bool):
    """The engine with or without its CUDA graph (cuda_graphs_wanted reads the switch per request)."""
    before = os.environ.get("JANUS_CUDA_GRAPHS")
    os.environ["JANUS_CUDA_GRAPHS"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("JANUS_CUDA_GRAPHS")
        else:
            os.environ["JANUS_CUDA_GRAPHS"] = before


def run(engine, implementation: str, request: ImageRequest, **options) -> dict:
    """One request by one implementation, with its peak memory; the engine's rows say if the graph ran."""
    runner = bench.run_engine if implementation.startswith("engine") else bench.RUNNERS[implementation]
    with graphs(implementation != "engine_eager"), bench.PeakMemory(engine.device) as memory:
        figures = runner(engine, request, **options)
    print(f"  {implementation}, {request.num_images} images, CFG {request.cfg_scale:g}, temperature "
          f"{request.temperature:g}: {figures['seconds']:.2f} s", flush=True)
    return {**figures, "peak_gib": memory.peak / GIB}


# ----- sections ----------------------------------------------------------------------------
def speed(engine, plan: Plan, budget: Budget, implementations=IMPLEMENTATIONS) -> dict:
    device = engine.device
    floor_step = None
    if device.type == "cuda":
        floor_step = bench.weight_bytes_per_step(engine.model) / bench.copy_bandwidth(device)
    if device.type == "cuda":  # the capture stream's cuBLAS set-up, kernel choices
        run(engine, "engine_graph", ImageRequest(bench.PROMPT, num_images=1, seed=bench.SEED))
    rows: dict = {"bandwidth_floor_step_ms": floor_step and round(1000 * floor_step, 3)}
    for name in implementations:
        rows[name] = {}
        for n in plan.sizes:
            if budget.spent():
                rows[name][n] = SKIPPED
                continue
            try:
                figures = run(engine, name, ImageRequest(bench.PROMPT, num_images=n, cfg_scale=5.0, seed=bench.SEED))
            except Exception as exc:  # transformers 5.17 cannot generate images: say why, go on
                rows[name][n] = failure(exc)
                release_memory(device)
                continue
            row = {"seconds": round(figures["seconds"], 3), "s_per_image": round(figures["seconds"] / n, 3),
                   "first_preview_s": figures["first_preview_s"] and round(figures["first_preview_s"], 3),
                   "peak_gib": round(figures["peak_gib"], 2)}
            if floor_step:
                row["fraction_of_floor"] = round(576 * floor_step / figures["seconds"], 3)
            if name.startswith("engine"):
                row["graphs_used"] = figures["graphs_used"]
                if floor_step and figures["step_s"]:
                    row["step_ms"] = round(1000 * figures["step_s"], 3)
                    row["step_fraction_of_floor"] = round(floor_step / figures["step_s"], 3)
            rows[name][n] = row
    return rows


def agreement(a: torch.Tensor, b: torch.Tensor, reason_if_not: str) -> dict:
    share = float((a == b).float().mean())
    return {"equal": share == 1.0, "share_equal": round(share, 4), **({} if share == 1.0 else {"why": reason_if_not})}


def greedy(engine, budget: Budget) -> dict:
    """Greedy tokens (2 images, CFG 5) of the graph, eager and transformers paths."""
    if budget.spent():
        return SKIPPED
    request = ImageRequest(bench.PROMPT, num_images=2, cfg_scale=5.0, temperature=0, seed=bench.SEED)
    tokens = {name: run(engine, name, request)["tokens"] for name in ("engine_graph", "engine_eager")}
    result = {"graph_vs_eager": agreement(tokens["engine_graph"], tokens["engine_eager"],
                                          "replay and eager should run the same kernels: a graph bug")}
    try:
        reference = bench.run_transformers(engine, request)["tokens"]
        result["graph_vs_transformers"] = agreement(
            tokens["engine_graph"], reference,
            "the engine mixes CFG in fp32, transformers in the model's dtype: a near-tie flips and the image "
            "goes its own way from there")
    except Exception as exc:
        result["graph_vs_transformers"] = failure(exc)
        release_memory(engine.device)
    return result


def seeds(engine, budget: Budget) -> dict:
    """The seed contract on this device: the noise equals the CPU's, a request repeats itself, and
    image i drawn alone vs in a batch of 4 or 16 (bf16 kernels are chosen per batch size)."""
    if budget.spent():
        return SKIPPED
    keys = image_keys(bench.SEED, 0, 16)
    on_device = hashed_uniforms(keys.to(engine.device), torch.tensor([7], device=engine.device), 16384).cpu()
    on_cpu = hashed_uniforms(keys, 7, 16384)
    result = {"noise_equal_to_cpu": bool(torch.equal(on_device, on_cpu)),
              "gumbel_share_equal_to_cpu": round(float((gumbel_noise(keys.to(engine.device), 7, 16384).cpu()
                                                         == gumbel_noise(keys, 7, 16384)).float().mean()), 4)}
    request = ImageRequest(bench.PROMPT, num_images=4, seed=bench.SEED)
    first = run(engine, "engine_graph", request)["tokens"]
    result["same_request_twice"] = compare(first, run(engine, "engine_graph", request)["tokens"])
    alone = torch.cat([run(engine, "engine_graph", replace(request, num_images=1, seed=bench.SEED + i))["tokens"]
                       for i in range(4)])
    sixteen = run(engine, "engine_graph", replace(request, num_images=16))["tokens"][:4]
    result["batch4_vs_alone"] = compare(first, alone)
    result["batch16_vs_alone"] = compare(sixteen, alone)
    return result


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Images identical, and the first step where each image differs (None: never)."""
    same = (a == b).all(dim=1)
    differ = (a != b).int().argmax(dim=1)
    return {"images_identical": f"{int(same.sum())}/{len(same)}",
            "first_differing_step": [None if s else int(d) for s, d in zip(same.tolist(), differ)]}


def fingerprint(engine, *, graph: bool, settle: bool, math_attention: bool, steps: int) -> dict:
    """One greedy image's first `steps` tokens straight from a TokenLoop (no previews), and every
    layer's cached keys: a bitwise record of all the arithmetic, which can differ long before a
    token does. `settle` waits for the GPU after every step, so only one stream is ever busy;
    `math_attention` forces PyTorch's plain attention kernels."""
    device = engine.device
    request = ImageRequest(bench.PROMPT, num_images=1, cfg_scale=5.0, temperature=0)
    attention = sdpa_kernel(SDPBackend.MATH) if math_attention else contextlib.nullcontext()
    with torch.inference_mode(), attention:  # as the product's loop runs (decode_slices)
        loop = engine.generator.token_loop([Slice(request, bench.SEED, first=0, count=1)], num_tokens=steps,
                                           fixed_shapes=True)
        for _ in loop.steps(use_cuda_graph=graph and device.type == "cuda"):
            if settle and device.type == "cuda":
                torch.cuda.synchronize(device)
        filled = loop.length + steps - 1  # the prompt's slots, then one per decoding step
        keys = torch.stack([layer.keys[:, :, :filled] for layer in loop.cache.layers]).cpu()
    keys = keys.contiguous().view(torch.uint8)  # raw bytes: bitwise, and a NaN equals itself
    result = {"tokens": loop.tokens.cpu(), "keys": keys, "prompt_slots": loop.length, "graphed": loop.graphed}
    loop.release()
    return result


def first_difference(a: dict, b: dict) -> dict:
    """Where two fingerprints part: the first token, and the first step and layer whose keys differ
    bitwise ("prefill" for the prompt's slots; a key at step k comes from step k-1's token)."""
    tokens = (a["tokens"] != b["tokens"])[0]
    differs = (a["keys"] != b["keys"]).any(-1).any(2).any(1)  # (layers, rows, heads, slots, bytes) -> (layers, slots)
    result = {"tokens_equal": not bool(tokens.any()), "first_token_step": int(tokens.int().argmax()) if tokens.any() else None,
              "keys_equal": not bool(differs.any()), "first_key_step": None, "first_layer": None}
    if differs.any():
        slot = int(differs.any(0).int().argmax())
        result["first_key_step"] = "prefill" if slot < a["prompt_slots"] else slot - a["prompt_slots"] + 1
        result["first_layer"] = int(differs[:, slot].int().argmax())
    return result


DETERMINISM_STEPS = 96  # four rows of the image: ~3 s eagerly on 7B


def determinism(engine, budget: Budget) -> dict:
    """Which path repeats itself bitwise, and where the arithmetic first parts. The 7B's first GPU
    run (H200, 2026-11-28) found a sampled request twice not equal and greedy graph vs eager 11%
    equal. Each variant runs twice; reading the result:
      eager differs from itself      a non-deterministic kernel (first_layer 0: a plain GEMM;
                                     eager_math repeating: the attention kernel)
      graph differs, graph_settled not   kernels chosen by what another stream is doing (cuBLAS
                                     documents this): settle the GPU before warm-up and capture
      graph vs eager only            replay and eager use different kernels: rounding, not a bug
    Rerun with CUBLAS_WORKSPACE_CONFIG=:4096:8 to see whether cuBLAS's multi-stream choice is it.
    The request rows check the product's path, previews included, on a whole image."""
    if budget.spent():
        return SKIPPED
    variants = {"graph": {"graph": True, "settle": False, "math_attention": False},
                "graph_settled": {"graph": True, "settle": True, "math_attention": False},
                "eager": {"graph": False, "settle": False, "math_attention": False},
                "eager_math": {"graph": False, "settle": False, "math_attention": True}}
    runs = {name: [fingerprint(engine, steps=DETERMINISM_STEPS, **options) for _ in range(2)]
            for name, options in variants.items()}
    result = {f"{name}_twice": first_difference(*pair) for name, pair in runs.items()}
    result["graph_vs_eager"] = first_difference(runs["graph"][0], runs["eager"][0])
    result["graphed"] = [twice["graphed"] for twice in runs["graph"]]
    request = ImageRequest(bench.PROMPT, num_images=1, cfg_scale=5.0, temperature=0, seed=bench.SEED)
    for label, implementation in (("request_graph_twice", "engine_graph"), ("request_eager_twice", "engine_eager")):
        a, b = (run(engine, implementation, request)["tokens"] for _ in range(2))
        result[label] = compare(a, b)
    return result


def chat(engine, plan: Plan, budget: Budget) -> dict:
    if budget.spent():
        return SKIPPED
    try:
        return bench.bench_understanding(engine, SimpleNamespace(new_tokens=plan.new_tokens))
    except Exception as exc:
        release_memory(engine.device)
        return failure(exc)


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def card_limit(engine, card_gib: int, plan: Plan) -> int:
    """Bytes PyTorch may use on the simulated card. In a dry run, scaled to the tiny model: the
    weights plus room for card_gib / 12 images, so the smallest card chunks a 2-image request."""
    if plan.device == "cuda":
        return (card_gib - CARD_OVERHEAD_GIB) * GIB
    inner = engine.model.model
    one_image = request_memory(engine.model.config, images=1, cfg=True, decode_batch=1,
                               prompt_tokens=engine.generator.prompt_tokens(ImageRequest(bench.PROMPT)),
                               llm_dtype=inner.language_model.dtype, vq_dtype=inner.vqmodel.dtype).peak
    return model_bytes(engine.model) + int((one_image * SAFETY + RESERVE_BYTES) * card_gib / 12)


@contextlib.contextmanager
def simulated_card(engine, limit: int):
    """On CUDA a per-process memory cap (the engine's free_bytes sees it, the allocator enforces
    it); the CPU has no cap to set, so the planner is shown the card's free memory instead."""
    device = engine.device
    if device.type == "cuda":
        release_memory(device)
        index = device.index if device.index is not None else torch.cuda.current_device()  # it takes no bare "cuda"
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(limit / total, index)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
        return
    from janus_demo import generation

    original, weights = generation.free_bytes, model_bytes(engine.model)
    generation.free_bytes = lambda device: max(0, limit - weights)
    try:
        yield
    finally:
        generation.free_bytes = original


def cards(engine, plan: Plan, budget: Budget) -> dict:
    """Every slider setting planned into chunks; the largest single loop and the largest request run."""
    results = {}
    prompt_tokens = engine.generator.prompt_tokens(ImageRequest(bench.PROMPT))
    for card in plan.cards_gib:
        limit = card_limit(engine, card, plan)
        weights = model_bytes(engine.model)
        entry = {"limit_gib": round(limit / GIB, 2), "weights_gib": round(weights / GIB, 2)}
        results[f"{card}GB"] = entry
        if weights >= limit:
            entry["loadable"] = False
            entry["why"] = "the weights alone exceed the card: load_engine refuses it before loading"
            continue
        with simulated_card(engine, limit):
            fits = {cfg: engine.generator.images_that_fit(ImageRequest(bench.PROMPT, num_images=plan.max_images,
                                                                       cfg_scale=cfg), prompt_tokens)
                    for cfg in (5.0, 1.0)}
            entry["images_per_loop"] = {"cfg5": fits[5.0], "cfg1": fits[1.0]}
            entry["plans"] = {f"{n}@cfg{int(cfg)}": plan_chunks(n, fits[cfg])
                              for cfg in (5.0, 1.0) for n in range(1, plan.max_images + 1)}
            entry["runs"] = {}
            for n in sorted({fits[5.0], plan.max_images}):
                if budget.spent():
                    entry["runs"][n] = SKIPPED
                    continue
                try:
                    figures = run(engine, "engine_graph", ImageRequest(bench.PROMPT, num_images=n, seed=bench.SEED))
                    entry["runs"][n] = {"finished": figures["tokens"].shape == (n, 576), "chunks": figures["chunks"],
                                        "seconds": round(figures["seconds"], 2), "peak_gib": round(figures["peak_gib"], 2),
                                        "graphs_used": figures["graphs_used"]}
                except Exception as exc:
                    entry["runs"][n] = {"finished": False, **failure(exc)}
                    release_memory(engine.device)
    return results


def nf4(engine, plan: Plan, budget: Budget) -> dict:
    """Quantize the loaded model in place (its bf16 figures are done), then speed and cards again."""
    if budget.spent():
        return SKIPPED
    try:
        quantization.quantize_language_model(engine.model, "nf4", engine.device, engine.precision.llm)
    except Exception as exc:
        return failure(exc)
    engine.precision = replace(engine.precision, quantize="nf4")
    release_memory(engine.device)
    figures = {"weights_gib": round(model_bytes(engine.model) / GIB, 2),
               "graph_probe": engine.generator.probe_cuda_graphs()}
    figures["speed"] = speed(engine, plan, budget, implementations=("engine_graph",))
    figures["cards"] = cards(engine, plan, budget)
    return figures


# ----- the run -----------------------------------------------------------------------------
def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "cuda": torch.version.cuda}
    for name in ("huggingface_hub", "bitsandbytes"):
        try:
            found[name] = __import__(name).__version__
        except Exception as exc:  # bitsandbytes raises more than ImportError when it finds no GPU library
            found[name] = f"not importable ({type(exc).__name__})"
    return found


def check(name: str, plan: Plan, budget: Budget, figures: dict, write, big: bool, sections=SECTIONS) -> None:
    """One model's sections; the first (big) one also goes on simulated cards, in bf16 then nf4.
    One model at a time: a memory cap counts every tensor of the process."""
    print(f"[{budget.elapsed():.0f} s] loading random:{name}", flush=True)
    started = time.perf_counter()
    engine = load_engine(f"random:{name}", device=plan.device, dtype=plan.dtype)
    section = figures["models"][name] = {
        "load_s": round(time.perf_counter() - started, 1),
        "graphs_on_after_probe": plan.device == "cuda" and not token_loop.graphs_broken()}
    work = {"speed": partial(speed, engine, plan, budget), "greedy": partial(greedy, engine, budget),
            "seeds": partial(seeds, engine, budget), "determinism": partial(determinism, engine, budget),
            "chat": partial(chat, engine, plan, budget)}
    if big:
        work.update(cards_bf16=partial(cards, engine, plan, budget), nf4=partial(nf4, engine, plan, budget))
    for key, measure in work.items():
        if key not in sections:
            continue
        print(f"[{budget.elapsed():.0f} s] {name}: {key}", flush=True)
        section[key] = measure()
        write()
    section["graphs_broken_at_end"] = token_loop.graphs_broken()
    device = engine.device
    del engine, work
    release_memory(device)


def print_table(figures: dict) -> None:
    print(f"\n{figures['machine']} · {figures['versions']}")
    print(f"{'model':14}{'path':18}{'images':>7}{'s/image':>9}{'floor':>7}{'preview':>9}{'peak GiB':>10}  graph")
    for model, section in figures["models"].items():
        for label, rows in (("", section.get("speed", {})), ("nf4 ", section.get("nf4", {}).get("speed", {}))):
            for name in IMPLEMENTATIONS:
                for n, row in rows.get(name, {}).items():
                    if "seconds" not in row:
                        print(f"{model:14}{label + name:18}{n:>7}  {next(iter(row.values()))[:70]}")
                        continue
                    floor = f"{100 * row['fraction_of_floor']:.0f}%" if "fraction_of_floor" in row else "-"
                    preview = f"{row['first_preview_s']:.2f}s" if row["first_preview_s"] is not None else "-"
                    print(f"{model:14}{label + name:18}{n:>7}{row['s_per_image']:>9.3f}{floor:>7}{preview:>9}"
                          f"{row['peak_gib']:>10.2f}  {row.get('graphs_used', '')}")
        print(f"{model}: greedy {json.dumps(section.get('greedy'))}")
        print(f"{model}: seeds {json.dumps(section.get('seeds'))}")
        print(f"{model}: determinism {json.dumps(section.get('determinism'))}")
        print(f"{model}: chat {json.dumps(section.get('chat'))}")
        for key in ("cards_bf16",):
            if key in section:
                print(f"{model}: {key} " + json.dumps({card: e.get("runs", e.get("why")) for card, e in section[key].items()}))
        if isinstance(section.get("nf4"), dict) and "cards" in section["nf4"]:
            print(f"{model}: cards_nf4 " + json.dumps({c: e.get("runs", e.get("why")) for c, e in section["nf4"]["cards"].items()}))
    print(f"total {figures['seconds']} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    plan = DRY if args.dry_run else GPU
    if args.budget_s is not None:
        plan = replace(plan, budget_s=args.budget_s)
    out = args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    budget = Budget(plan.budget_s)
    figures = {"dry_run": args.dry_run, "machine": bench.machine(torch.device(plan.device)), "versions": versions(),
               "plan": {k: v for k, v in vars(plan).items()}, "models": {}}

    def write() -> None:
        figures["seconds"] = round(budget.elapsed(), 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2, default=str))

    for name in args.models or plan.models:
        check(name, plan, budget, figures, write, big=name == plan.models[0], sections=args.sections or SECTIONS)
        write()
    print_table(figures)
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
