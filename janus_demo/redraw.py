"""Back from one of our PNGs to what drew it: every PNG carries its batch's request and its
place in the batch (see `GenerationResult.image_params`), which is enough to draw it again."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import InputError
from .generation import ImageRequest
from .images import read_png_params

NOT_OURS = ("That image carries no Janus demo parameters; only PNGs saved by this demo "
            "(its Draw tab, its API or its command line) can be redrawn.")


@dataclass(frozen=True)
class DrawnImage:
    """Image `index` of the batch `request` drew (seed set), by `model`, saved at `scale` x its size."""

    request: ImageRequest
    index: int
    model: str
    scale: int = 1

    def alone(self) -> ImageRequest:
        """The request that draws this image by itself (seed + k, its own CFG and temperature)."""
        return self.request.image(self.index)

    def check_model(self, model_name: str) -> None:
        """Refuse to redraw with another model: the same seed would draw a different picture."""
        if self.model != model_name:
            raise InputError(f"That image was drawn by {self.model}, but this runs {model_name}; "
                             "redraw it with the model that drew it.")


def read_drawn_image(path: str | os.PathLike) -> DrawnImage:
    """What one of our PNGs says about itself; anything else is refused with one sentence."""
    params = read_png_params(path)
    if "compare_grid" in params:
        raise InputError("That is a compare grid; drop one of its cells' PNGs to redraw that image.")
    names = {f.name for f in fields(ImageRequest)}
    try:
        request = ImageRequest(**{k: v for k, v in params.items() if k in names})
        index, model, scale = params["image_index"], params["model"], params.get("display_scale", 1)
        ok = (request.seed is not None and isinstance(index, int) and 0 <= index < request.num_images
              and isinstance(model, str) and scale in (1, 2))
    except (InputError, KeyError, TypeError):
        ok = False
    if not ok:
        raise InputError(NOT_OURS)
    return DrawnImage(request=request, index=index, model=model, scale=scale)
