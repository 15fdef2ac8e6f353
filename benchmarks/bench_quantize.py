"""What --quantize costs on a CPU: weights, one decode step and a prefill, unquantized vs int8 vs nf4, in one run.

    python benchmarks/bench_quantize.py --arch small --json quantize.json

bitsandbytes runs on a CPU, slowly: the figures say how slowly, which is why quantization is
meant for GPUs (README, Performance). Same random weights for every mode; the parts are
bench_cpu_parts.py's (an image-decoding step of the language model and generation head for 1
image with CFG, and a --prefill-token prompt).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import transformers

import bench_cpu_parts as parts_bench  # this folder; it puts the repository root on sys.path
from janus_demo import load_engine  # noqa: E402
from janus_demo.presets import PRESETS  # noqa: E402

MODES = (None, "int8", "nf4")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small", choices=list(PRESETS))
    parser.add_argument("--prefill", type=int, default=128, help="prompt tokens for the prefill timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=str, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    rows = []
    for mode in MODES:
        engine = load_engine(f"random:{args.arch}", device="cpu", quantize=mode)
        parts = parts_bench.Parts(engine.model, args.prefill)
        with torch.inference_mode():
            step = parts_bench.seconds(parts.llm_step(2), args.repeats) / 2  # two steps per call
            prefill = parts_bench.seconds(parts.prefill, args.repeats)
        language = engine.model.model.language_model
        weights = sum(p.numel() * p.element_size() for p in language.layers.parameters())
        rows.append({"quantize": mode or "none", "llm_layer_weights_mb": round(weights / 2**20, 1),
                     "step_s": round(step, 4), "prefill_s": round(prefill, 4)})
        print(f"{mode or 'none':6} layers {rows[-1]['llm_layer_weights_mb']:8.1f} MB   decode step (1 image, CFG) "
              f"{step:7.3f} s   prefill {args.prefill} tokens {prefill:7.3f} s", flush=True)
    base = rows[0]
    for row in rows[1:]:
        print(f"{row['quantize']}: step {row['step_s'] / base['step_s']:.1f}x, prefill "
              f"{row['prefill_s'] / base['prefill_s']:.1f}x the unquantized time")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"arch": args.arch, "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "figures": rows}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
