"""Janus-Pro demo web app: `python app.py [--model ID|PATH|tiny-random] [--device ...] [--share] ...`

A Hugging Face Space runs this file as is; host, port and the model then come from the
Space's environment (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, JANUS_MODEL).
"""

import spaces  # noqa: F401  -- first: on ZeroGPU it must patch torch before CUDA is touched

import argparse
import logging
import os
import sys

ON_SPACE = bool(os.environ.get("SPACE_ID"))


def at_least_one(text: str) -> int:
    """A whole number of at least 1: a limit of 0 would leave requests waiting forever."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Janus-Pro demo: chat about images and draw images from text.")
    parser.add_argument("--model", default=env("JANUS_MODEL"),
                        help="Hub id, local folder, tiny-random or random:<preset> (default: 7B on a big GPU, else 1B)")
    parser.add_argument("--device", default=env("JANUS_DEVICE"), help="cuda, cuda:N or cpu (default: CUDA if present)")
    parser.add_argument("--dtype", default=env("JANUS_DTYPE"), help="LLM dtype: bf16, fp16 or fp32 (default: automatic)")
    parser.add_argument("--quantize", default=env("JANUS_QUANTIZE"),
                        help="int8 or nf4: the language model in 8 or 4 bits (bitsandbytes): "
                             "7B on a 12 GB GPU, 2-8x faster on a CPU")
    parser.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also make a public *.gradio.live link")
    parser.add_argument("--max-images", type=at_least_one, default=16, help="most parallel samples one request may ask for")
    parser.add_argument("--concurrency", type=at_least_one, default=1, help="chat answers running at once")
    parser.add_argument("--batch-users", type=at_least_one, default=1,
                        help="image requests that may share one decoding loop: more images per second, but "
                             "a seed's images can come out different from a run alone when prompts differ in "
                             "length (default 1: off; always off on ZeroGPU)")
    parser.add_argument("--queue-size", type=at_least_one, default=20, help="requests allowed to wait; more are refused")
    parser.add_argument("--max-file-size", default="20mb", help="largest upload accepted, e.g. 20mb")
    parser.add_argument("--timeout", type=float, default=900, help="seconds of model time one request may use")
    return parser.parse_args(argv)


def create_app(args: argparse.Namespace):
    """Load the model, then build the UI around it (raises JanusError with a readable message)."""
    from janus_demo import load_engine
    from janus_demo.loading import on_zerogpu
    from janus_demo.web import gpu_tasks
    from janus_demo.web.demo import build_demo

    engine = load_engine(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize)
    batch_users = 1 if on_zerogpu() else args.batch_users  # each ZeroGPU call is a process of its own
    engine.share_decoding(batch_users > 1)
    gpu_tasks.install(engine)
    demo = build_demo(model_name=engine.name, max_images=args.max_images, concurrency=args.concurrency,
                      batch_users=batch_users, time_limit_s=args.timeout)
    return demo.queue(max_size=args.queue_size, default_concurrency_limit=args.concurrency)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from janus_demo import JanusError

    try:
        demo = create_app(args)
    except JanusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share and not ON_SPACE,
        max_file_size=args.max_file_size,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
