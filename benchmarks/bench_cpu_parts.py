"""Which thread count and dtype each part of Janus should use on a CPU, measured side by side.

    python benchmarks/bench_cpu_parts.py --arch janus-pro-1b --threads 1 2 --json cpu-parts.json

Times, for every (threads, dtype) pair on the same random weights:
  llm step      one image-decoding step of the language model (+ generation head) for 1 and 4
                images with CFG (2 and 8 rows), the loop's unit of work
  llm prefill   a chat prompt of --prefill tokens (understanding's first-token wait), as tokens/s
  vision        the SigLIP encoder + aligner on one 384x384 image (every uploaded image)
  vq decode     one 384x384 image from its 576 tokens; bf16 convolutions are so slow on CPUs
                without bf16 math that they are timed on a 2-row strip and scaled to 24 rows
                (the decoder is convolutional; fp32 times both ways to check the scaling)
Prints one table per part with the fastest setting marked, and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from janus_demo import load_engine  # noqa: E402
from janus_demo.presets import PRESETS  # noqa: E402
from janus_demo.token_loop import CACHE_KWARG  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STRIP_ROWS = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", choices=list(PRESETS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 8], help="LLM rows per step (2 per CFG image)")
    parser.add_argument("--prefill", type=int, default=128, help="prompt tokens for the prefill timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def seconds(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` runs after one warm-up run."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class Parts:
    """The four pieces of work, each a no-argument callable over fixed random inputs."""

    def __init__(self, model, prefill_tokens: int) -> None:
        self.model = model
        inner = model.model
        self.vq = inner.vqmodel
        self.grid = self.vq.quantize.quant_state_dims[0]
        vocab = inner.language_model.config.vocab_size
        generator = torch.Generator().manual_seed(0)
        self.prompt = torch.randint(0, vocab, (1, prefill_tokens), generator=generator)
        self.codes = torch.randint(0, self.vq.config.num_embeddings, (1, self.grid * self.grid), generator=generator)
        side = model.config.vision_config.image_size
        self.pixels = torch.randn((1, 3, side, side), generator=generator)

    def llm_step(self, rows: int) -> Callable[[], None]:
        """One decode step over a short cache; the weights dominate, as in the real loop."""
        inner = self.model.model
        token = torch.zeros((rows, 1), dtype=torch.long)

        def step() -> None:
            cache = DynamicCache(config=self.model.config.get_text_config(decoder=True))
            embeds = self.model.prepare_embeddings_for_image_generation(token)
            inner.language_model(inputs_embeds=embeds, use_cache=True, **{CACHE_KWARG: cache})  # fills the cache
            hidden = inner.language_model(inputs_embeds=embeds, use_cache=True, **{CACHE_KWARG: cache}).last_hidden_state
            inner.generation_head(hidden[:, -1, :])

        return step

    def prefill(self) -> None:
        self.model.model.language_model(input_ids=self.prompt, use_cache=False)

    def vision(self) -> None:
        pixels = self.pixels.to(self.model.model.vision_model.dtype)
        self.model.model.get_image_features(pixels)

    def vq_decode(self, rows: int) -> None:
        codes = F.normalize(self.vq.quantize.embedding(self.codes[:, : rows * self.grid]), p=2, dim=-1)
        codes = codes.view(1, rows, self.grid, -1).permute(0, 3, 1, 2).contiguous()
        self.vq.decoder(self.vq.post_quant_conv(codes))


def measure(parts: Parts, args) -> list[dict]:
    """Rows of {part, dtype, threads, seconds}; the step is timed twice (two steps per call), halved."""
    figures = []
    for dtype_name in args.dtypes:
        parts.model.to(DTYPES[dtype_name])
        for threads in args.threads:
            torch.set_num_threads(threads)
            timings = {f"llm step, {rows} rows": seconds(parts.llm_step(rows), args.repeats) / 2 for rows in args.rows}
            timings[f"llm prefill, {args.prefill} tokens"] = seconds(parts.prefill, max(1, args.repeats - 1))
            timings["vision, 1 image"] = seconds(parts.vision, args.repeats)
            strip = seconds(lambda: parts.vq_decode(STRIP_ROWS), args.repeats) * parts.grid / STRIP_ROWS
            timings["vq decode, 1 image"] = strip
            if dtype_name == "fp32":
                timings["vq decode, 1 image (unscaled)"] = seconds(lambda: parts.vq_decode(parts.grid), args.repeats)
            for part, value in timings.items():
                figures.append({"part": part, "dtype": dtype_name, "threads": threads, "seconds": round(value, 4)})
                print(f"  {part:34} {dtype_name:5} {threads} threads  {value:8.3f} s", flush=True)
    return figures


def print_tables(figures: list[dict]) -> None:
    for part in dict.fromkeys(row["part"] for row in figures):
        rows = [row for row in figures if row["part"] == part]
        best = min(rows, key=lambda row: row["seconds"])
        print(f"\n{part}")
        for row in rows:
            mark = "  <- fastest" if row is best else ""
            print(f"  {row['dtype']:5} {row['threads']} threads {row['seconds']:9.3f} s{mark}")


def main(argv=None) -> int:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    default_threads = torch.get_num_threads()
    engine = load_engine(f"random:{args.arch}", device="cpu", dtype="fp32")
    with torch.inference_mode():
        figures = measure(Parts(engine.model, args.prefill), args)
    torch.set_num_threads(default_threads)
    print_tables(figures)
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "torch": torch.__version__, "cpu_threads_default":
                                         default_threads, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
