"""How events share the model: the concurrency groups, and which events stay out of the API."""

from __future__ import annotations

from dataclasses import dataclass

PRIVATE = {"api_visibility": "private"}  # a UI event: clients see only the API's named endpoints


@dataclass(frozen=True)
class Groups:
    """Keyword arguments of events that run the model: answers (`gpu`) and drawings (`draw`)."""

    gpu: dict
    draw: dict


def groups(concurrency: int, batch_users: int) -> Groups:
    """Chat answers run `concurrency` at a time. Image requests too, unless `batch_users` > 1:
    then that many may be in flight, and the engine's shared decoder runs them in one loop."""
    gpu = {"concurrency_id": "gpu", "concurrency_limit": concurrency}
    draw = {"concurrency_id": "draw", "concurrency_limit": batch_users} if batch_users > 1 else gpu
    return Groups(gpu=gpu, draw=draw)
