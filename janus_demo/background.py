"""Step-wise model work in a thread of its own, so whoever consumes it stays free to stop it.

Gradio can only close a generator between two `yield`s, and every yield costs it a round
trip (~10 ms on a small CPU). Running the model in a worker thread decouples the two: the
model never waits for the web server, the consumer yields on a fixed cadence (so a Stop or
a closed tab reaches it within one beat), and closing the consumer stops the worker at its
next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from queue import Empty, Queue
from threading import Event, Thread
from typing import TypeVar

T = TypeVar("T")
Work = Callable[[Callable[[T], None], Event], None]
_DONE = object()


def run_in_background(
    work: Work, *, every: float, eager: bool = False, name: str = "janus-work"
) -> Iterator[list[T]]:
    """Run `work(emit, stop)` in a thread; every `every` seconds, yield what it emitted since
    (`eager`: as soon as anything comes, and after `every` seconds without news).

    Batches may be empty: they are the heartbeat that lets a consumer be closed while the
    work is busy. `work` should check `stop.is_set()` at every step; closing the iterator
    sets `stop` and waits for the thread. An exception raised by `work` is re-raised here.
    """
    items: Queue = Queue()
    stop = Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            work(items.put, stop)
        except BaseException as exc:  # handed to the consumer's thread below
            failure.append(exc)
        finally:
            items.put(_DONE)

    thread = Thread(target=target, name=name, daemon=True)
    thread.start()
    finished = False
    try:
        while not finished:
            batch: list[T] = []
            due = time.monotonic() + every
            while (wait := due - time.monotonic()) > 0:
                try:
                    item = items.get(timeout=wait)
                except Empty:
                    break
                if item is _DONE:
                    finished = True
                    break
                batch.append(item)
                if eager:
                    due = time.monotonic()  # take what is queued already, then yield
            if batch or not finished:
                yield batch
    finally:
        stop.set()
        thread.join()
    if failure:
        raise failure.pop()
