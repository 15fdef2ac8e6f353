"""Command line for quick looks without the UI.

    python -m janus_demo generate "a prompt" -n 4 --seed 1 --out DIR
    python -m janus_demo generate --from DIR/janus_1_2.png   # image #3 of that batch, drawn alone
    python -m janus_demo ask IMAGE "question"
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from .errors import JanusError

if TYPE_CHECKING:
    from .generation import ImageRequest


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="Hub id, local folder, tiny-random or random:<preset>")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: CUDA if present)")
    parser.add_argument("--dtype", default=None, help="LLM dtype: bf16, fp16 or fp32 (default: automatic)")
    parser.add_argument("--quantize", default=None,
                        help="int8 or nf4: the language model in 8 or 4 bits (less memory; faster on a CPU)")
    parser.add_argument("--seed", type=int, default=None, help="fixed seed for reproducible output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m janus_demo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="draw images from a prompt and save PNGs")
    gen.add_argument("prompt", nargs="?")
    gen.add_argument("--from", dest="source", metavar="FILE.png",
                     help="redraw one of our PNGs alone, pixel for pixel, from its own parameters "
                          "(its model unless --model is given; the other drawing options are ignored)")
    gen.add_argument("-n", "--num-images", type=int, default=4)
    gen.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (1 = off)")
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--negative", default=None, help="negative prompt for the unconditional rows")
    gen.add_argument("--out", default="outputs", help="folder for the PNGs (created if missing)")
    _common(gen)

    ask = commands.add_parser("ask", help="ask a question about an image; the answer streams")
    ask.add_argument("image")
    ask.add_argument("question")
    ask.add_argument("--temperature", type=float, default=0.1, help="0 = greedy")
    ask.add_argument("--top-p", type=float, default=0.95)
    ask.add_argument("--max-new-tokens", type=int, default=512)
    _common(ask)
    return parser


def run_generate(engine, request: ImageRequest, *, out: str, quiet: bool, scale: int = 1) -> None:
    from tqdm import tqdm

    with tqdm(total=engine.generator.num_tokens, unit="tok", desc="Drawing", file=sys.stderr, disable=quiet) as bar:

        def on_progress(step: int, total: int, preview) -> None:
            bar.total = total  # more than 576 steps when memory splits the images into batches
            bar.update(step - bar.n)

        result = engine.generate_images(**asdict(request), on_progress=on_progress)
    for path in result.save(out, scale=scale):
        print(path)


def run_ask(engine, args) -> None:
    from .images import open_image

    messages = [{"role": "user", "content": [{"type": "image", "image": open_image(args.image)},
                                             {"type": "text", "text": args.question}]}]
    stream = engine.chat(
        messages, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    from .generation import ImageRequest
    from .loading import load_engine
    from .redraw import read_drawn_image

    if args.command == "generate" and (args.prompt is None) == (args.source is None):
        build_parser().error("generate takes a prompt or --from FILE.png (one of the two)")
    try:
        load = {"device": args.device, "dtype": args.dtype, "quantize": args.quantize}
        if args.command == "ask":
            run_ask(load_engine(args.model, **load), args)
        elif args.source is not None:
            drawn = read_drawn_image(args.source)
            engine = load_engine(args.model or drawn.model, **load)
            drawn.check_model(engine.name)
            run_generate(engine, drawn.alone(), out=args.out, quiet=args.quiet, scale=drawn.scale)
        else:
            request = ImageRequest(args.prompt, num_images=args.num_images, cfg_scale=args.cfg,
                                   temperature=args.temperature, seed=args.seed, negative_prompt=args.negative)
            run_generate(load_engine(args.model, **load), request, out=args.out, quiet=args.quiet)
    except JanusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
