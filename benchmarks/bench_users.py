"""Throughput with 1, 2 and 4 users asking for images at the same moment, on one device.

    python benchmarks/bench_users.py --arch small --images 1 --users 1 2 4

Two ways to serve them, in one run, on the same weights and seeds:
  one at a time  each request gets the model in turn (what a queue with concurrency 1 does)
  shared loop    requests waiting together are decoded in one loop (janus_demo.batching)
Reports images per second, mean and worst latency, the ratio, and how many users got
bit-identical images both ways (prompts of different lengths are padded in a shared loop,
which can round differently and change draws). Writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from janus_demo import load_engine  # noqa: E402
from janus_demo.batching import SharedDecoder  # noqa: E402
from janus_demo.generation import GenerationResult, ImageRequest  # noqa: E402
from janus_demo.presets import PRESETS  # noqa: E402


PROMPTS = ["A watercolor fox curled up in fresh snow", "A lighthouse on a cliff during a storm, oil painting",
           "A steaming bowl of ramen", "An astronaut riding a horse on the moon, Earth in the background"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", help=f"random preset ({', '.join(PRESETS)}) or a model id/path")
    parser.add_argument("--device", default=None)
    parser.add_argument("--images", type=int, default=1, help="images each user asks for")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def serve(users: int, images: int, stream) -> tuple[float, list[float], list[torch.Tensor]]:
    """All users ask at once; returns wall time, each user's latency and tokens."""
    latencies, tokens = [0.0] * users, [None] * users
    start = threading.Barrier(users + 1)

    def user(index: int) -> None:
        request = ImageRequest(PROMPTS[index % len(PROMPTS)], num_images=images, seed=100 * index)
        start.wait()
        began = time.perf_counter()
        for event in stream(request):
            if isinstance(event, GenerationResult):
                tokens[index] = event.tokens
        latencies[index] = time.perf_counter() - began

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, latencies, tokens


def main(argv=None) -> int:
    args = parse_args(argv)
    engine = load_engine(f"random:{args.arch}" if args.arch in PRESETS else args.arch, device=args.device)
    lock = threading.Lock()

    def one_at_a_time(request):
        with lock:
            yield from engine.generator.stream(request)

    shared = SharedDecoder(engine.generator)
    modes = {"one at a time": one_at_a_time, "shared loop": shared.stream}
    serve(1, 1, one_at_a_time)  # warm-up
    figures = {"arch": args.arch, "device": str(engine.device), "images_per_user": args.images, "runs": []}
    print(f"{args.arch} on {engine.device}, {args.images} image(s) per user")
    print(f"{'users':>5} {'mode':>14} {'images/s':>9} {'mean s':>8} {'worst s':>8}")
    for users in args.users:
        row = {"users": users}
        tokens = {}
        for mode, stream in modes.items():
            wall, latencies, tokens[mode] = serve(users, args.images, stream)
            row[mode] = {"images_per_s": round(users * args.images / wall, 3),
                         "mean_latency_s": round(statistics.mean(latencies), 2),
                         "worst_latency_s": round(max(latencies), 2)}
            print(f"{users:>5} {mode:>14} {row[mode]['images_per_s']:>9.3f} {row[mode]['mean_latency_s']:>8.2f} "
                  f"{row[mode]['worst_latency_s']:>8.2f}")
        row["throughput_ratio"] = round(row["shared loop"]["images_per_s"] / row["one at a time"]["images_per_s"], 2)
        pairs = list(zip(tokens["one at a time"], tokens["shared loop"]))
        row["identical_users"] = sum(torch.equal(a, b) for a, b in pairs)
        row["token_agreement"] = round(sum((a == b).float().mean().item() for a, b in pairs) / len(pairs), 4)
        print(f"{'':>5} shared/one-at-a-time throughput {row['throughput_ratio']}x; bit-identical images for "
              f"{row['identical_users']}/{users} users, {100 * row['token_agreement']:.2f}% of tokens equal")
        figures["runs"].append(row)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
