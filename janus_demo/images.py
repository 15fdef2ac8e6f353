"""Pictures in and out: normalise whatever users upload, turn decoder output into PNGs."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import InputError

NEUTRAL_GRAY = (127, 127, 127)  # Janus pads with this; transparent areas become the same
MAX_PIXELS = 64_000_000  # larger uploads are refused before they are decoded
MAX_ASPECT = 20  # a 384x384 view of anything narrower keeps no detail of the short side
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}


def open_image(source: str | os.PathLike | bytes | io.IOBase, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file, refusing bombs and damaged files with a clear message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError as exc:
        raise InputError(f"There is no image file at {source}.") from exc
    except (UnidentifiedImageError, ValueError) as exc:
        raise InputError("That file is not an image Pillow can read; upload a PNG, JPEG, WebP or GIF.") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"That image is too large; the limit is {max_pixels // 1_000_000} megapixels.") from exc
    except OSError as exc:
        raise InputError("The image could not be opened; check the file and try again.") from exc
    check_size(image, max_pixels=max_pixels)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InputError("The image file is damaged or truncated; re-save it and upload it again.") from exc
    return image


def check_size(image: Image.Image, *, max_pixels: int = MAX_PIXELS) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError("The image is empty (0 pixels wide or tall).")
    if width * height > max_pixels:
        raise InputError(
            f"That image is {width}x{height}; the limit is {max_pixels // 1_000_000} megapixels. Downscale it first."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InputError(
            f"That image is {width}x{height}, more than {MAX_ASPECT} times longer one way than the other; "
            "crop it to the part you are asking about."
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """An upright 8-bit RGB copy: EXIF orientation applied, first frame only, alpha over gray."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF: keep the pixels as stored rather than fail
        image = image.copy()
    if image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit(image)
    elif image.mode == "LAB":
        image = ImageCms.applyTransform(
            image, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        )
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*NEUTRAL_GRAY, 255))
        canvas.alpha_composite(rgba)
        image = canvas
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit and float grayscale into 0..255 instead of clipping to white."""
    pixels = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        pixels = pixels / 257.0
    else:
        low, high = float(pixels.min()), float(pixels.max())
        if image.mode == "F" and low >= 0 and high <= 1:
            pixels = pixels * 255.0
        elif low < 0 or high > 255:
            pixels = (pixels - low) / max(high - low, 1e-12) * 255.0
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="L")


def decoded_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """VQ decoder output (N, H, W, 3) in about [-1, 1] to PIL, with the original demo's rounding."""
    array = ((pixels.float() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in array]


def png_info(params: Mapping[str, object]) -> PngImagePlugin.PngInfo:
    """PNG text chunks: one per parameter, plus all of them as JSON under "janus_demo"."""
    info = PngImagePlugin.PngInfo()
    for key, value in params.items():
        if value is not None:
            info.add_itxt(key, str(value))
    info.add_itxt("janus_demo", json.dumps({k: v for k, v in params.items() if v is not None}, sort_keys=True))
    return info


def enlarge(image: Image.Image, scale: int) -> Image.Image:
    """`image` `scale` times larger with LANCZOS, as the official demo shows its 384 px output at 768."""
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)


def save_png(image: Image.Image, path: str | os.PathLike, params: Mapping[str, object], *, scale: int = 1) -> Path:
    """`image` as a PNG carrying `params`; enlarged `scale` times, the metadata says so (the model
    drew it at its own size, which a redraw reproduces before enlarging the same way)."""
    if scale != 1:
        params = {**params, "model_output_px": image.width, "display_scale": scale, "display_resample": "LANCZOS"}
    path = Path(path)
    enlarge(image, scale).save(path, format="PNG", pnginfo=png_info(params))
    return path


def read_png_params(path: str | os.PathLike) -> dict:
    """The parameters `save_png` stored, so a PNG can be regenerated exactly ({} if it has none)."""
    image = open_image(path)
    try:
        return json.loads(getattr(image, "text", {}).get("janus_demo", "{}"))
    except json.JSONDecodeError:
        return {}
