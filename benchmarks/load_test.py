"""Load test: several clients at once against a running app, on loopback only.

    python benchmarks/load_test.py --url http://127.0.0.1:7860/ --clients 4 --requests 3

Each client has its own prompt, seed and question. Their reference results are first taken
one at a time; then all clients run together and every result must equal its reference
byte for byte (images) or character for character (answers): nobody gets someone else's
result or a partial one. Prints throughput and latency; exits 1 if anything was wrong.
Bounded: --clients x --requests requests, and --max-seconds for the whole run (a request
still running then is cancelled). Answers to different questions must differ, or a swap
could not be seen.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from gradio_client import Client, handle_file
from PIL import Image

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CHART = Path(__file__).resolve().parents[1] / "examples" / "chart.png"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3, help="per client, alternating draw and ask")
    parser.add_argument("--images", type=int, default=2, help="images per draw request")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=600, help="give up on the whole run after this")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if urlparse(args.url).hostname not in LOOPBACK:
        parser.error("load tests only target this machine (127.0.0.1 / localhost)")
    if not (1 <= args.clients <= 32 and 1 <= args.requests <= 50):
        parser.error("keep it bounded: 1-32 clients, 1-50 requests each")
    return args


def requests_for(client_id: int, count: int, args) -> list[tuple[str, dict]]:
    """The client's own requests: a unique prompt and seed, a unique question."""
    out = []
    for i in range(count):
        if i % 2 == 0:
            out.append(("/generate", dict(prompt=f"client {client_id} request {i}: a lighthouse at dusk",
                                          num_images=args.images, cfg_scale=5.0, temperature=1.0,
                                          seed=1000 * client_id + i)))
        else:
            # Sampled with a seed of its own: reproducible, and distinct even on a random model
            # whose greedy answer would be the same for every question.
            out.append(("/understand", dict(image=str(CHART), question=f"Client {client_id}, question {i}: what sold best?",
                                            temperature=1.0, top_p=0.95, max_new_tokens=args.max_new_tokens,
                                            seed=1000 * client_id + i)))
    return out


def call(client: Client, endpoint: str, params: dict, deadline: float):
    """One request, given up (and cancelled on the server) at the run's deadline."""
    if endpoint == "/understand":
        params = {**params, "image": handle_file(params["image"])}
    job = client.submit(**params, api_name=endpoint)
    try:
        return job.result(timeout=max(deadline - time.monotonic(), 0.1))
    except TimeoutError:
        job.cancel()
        raise TimeoutError("run exceeded --max-seconds") from None


def fingerprint(endpoint: str, params: dict, result) -> object:
    """What must be identical between the reference and the loaded run; checks it is this client's."""
    if endpoint == "/understand":
        assert isinstance(result, str), result
        return result
    images, seed = result
    assert seed == params["seed"], f"asked seed {params['seed']}, got {seed}"
    assert len(images) == params["num_images"], f"asked {params['num_images']} images, got {len(images)}"
    pixels = []
    for item in images:
        with Image.open(item["image"]) as image:
            meta = json.loads(image.text["janus_demo"])
            assert meta["prompt"] == params["prompt"] and meta["seed"] == params["seed"], meta
            pixels.append(image.tobytes())
    return pixels


def main(argv=None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    plans = {c: requests_for(c, args.requests, args) for c in range(args.clients)}

    print(f"reference run: {args.clients * args.requests} requests one at a time")
    reference_client = Client(args.url, verbose=False)
    reference = {(c, i): fingerprint(ep, p, call(reference_client, ep, p, deadline))
                 for c, plan in plans.items() for i, (ep, p) in enumerate(plan)}
    reference_client.close()
    answers = [reference[(c, i)] for c, plan in plans.items() for i, (ep, _) in enumerate(plan) if ep == "/understand"]
    if len(set(answers)) < len(answers):  # else a swapped answer would pass unnoticed
        print("FAILED: two questions got the same reference answer; the run could not tell clients apart")
        return 1

    latencies: dict[str, list[float]] = {"/generate": [], "/understand": []}
    failures: list[str] = []
    lock = threading.Lock()

    def run_client(c: int) -> None:
        client = Client(args.url, verbose=False)
        try:
            for i, (endpoint, params) in enumerate(plans[c]):
                start = time.perf_counter()
                result = call(client, endpoint, params, deadline)
                elapsed = time.perf_counter() - start
                ok = fingerprint(endpoint, params, result) == reference[(c, i)]
                with lock:
                    latencies[endpoint].append(elapsed)
                    if not ok:
                        failures.append(f"client {c} request {i} ({endpoint}) differs from its reference")
        except Exception as exc:
            with lock:
                failures.append(f"client {c}: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    print(f"loaded run: {args.clients} clients x {args.requests} requests at once")
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(run_client, range(args.clients)))
    wall = time.perf_counter() - started

    done = sum(len(v) for v in latencies.values())
    figures = {"clients": args.clients, "requests": done, "wall_s": round(wall, 2),
               "throughput_req_per_s": round(done / wall, 3), "failures": failures}
    for endpoint, values in latencies.items():
        if values:
            ordered = sorted(values)
            figures[endpoint] = {
                "count": len(values),
                "p50_s": round(statistics.median(ordered), 2),
                "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
                "max_s": round(ordered[-1], 2),
            }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    expected = args.clients * args.requests
    if failures or done != expected:
        print(f"FAILED: {len(failures)} problem(s), {done}/{expected} requests completed")
        return 1
    print(f"all {expected} results verified: every client got its own, complete result")
    return 0


if __name__ == "__main__":
    sys.exit(main())
