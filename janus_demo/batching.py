"""Image requests from different users that arrive together share one decoding loop.

Every image takes exactly 576 steps, and on a GPU (or a memory-bound CPU) a step costs
nearly the same for 2 rows as for 32: the weights are read once either way. So requests
that are waiting when a loop starts, and that sample alike (same CFG scale, temperature,
top-k, top-p), are decoded together and each gets its own progress, previews and images.
Per-image seeds make each user's images those of a loop of their own; when prompts differ
in token length the shorter ones are left-padded, and attention over the padded cache may
round differently. The Gumbel-max draw (sampling.py) flips a pick on that only at a near-tie
(none in the README's reproducibility run; the old inverse-CDF draw kept 78% of tokens). It is
opt-in (`app.py --batch-users`), meant for dedicated hosts that want throughput; on ZeroGPU
every request runs in its own GPU worker anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from queue import Empty, Queue
from threading import Event, Lock, Thread

from .cancellation import CancelCheck, as_cancel_check
from .errors import Cancelled
from .generation import GenerationResult, ImageGenerator, ImageRequest, PreviewBudget, Progress, Slice
from .memory import is_out_of_memory, release_memory

logger = logging.getLogger(__name__)

POLL_S = 0.1  # how often a request waiting for its loop checks whether it was cancelled


@dataclass
class _Job:
    request: ImageRequest  # with its seed drawn
    is_cancelled: object
    preview_budget: float
    events: Queue = field(default_factory=Queue)
    gone: Event = field(default_factory=Event)  # the consumer stopped listening
    served: bool = False  # its result (or its cancellation) has been handed over

    def stopped(self) -> bool:
        return self.gone.is_set() or self.is_cancelled()


class SharedDecoder:
    """A drop-in for `ImageGenerator.stream` that decodes concurrent requests together."""

    def __init__(self, generator: ImageGenerator, *, wait_s: float = 0.05, max_jobs: int = 8) -> None:
        self.generator = generator
        self.wait_s = wait_s  # how long a new loop waits for companions to arrive
        self.max_jobs = max_jobs
        self._pending: list[_Job] = []
        self._arrived = Event()
        self._lock = Lock()
        self._worker: Thread | None = None

    def stream(self, request: ImageRequest, *, cancel: CancelCheck = None,
               preview_budget: float = 0.05) -> Iterator[Progress | GenerationResult]:
        """Progress events, then the result, like `ImageGenerator.stream`; closing stops listening."""
        job = _Job(request.with_seed(), as_cancel_check(cancel), preview_budget)
        with self._lock:
            self._pending.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = Thread(target=self._run, name="janus-shared-decoder", daemon=True)
                self._worker.start()
        self._arrived.set()
        try:
            while True:
                try:
                    event = job.events.get(timeout=POLL_S)
                except Empty:
                    if job.is_cancelled() and self._withdraw(job):  # cancelled before its loop began
                        raise Cancelled("Generation was stopped.") from None
                    continue
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, GenerationResult):
                    return
        finally:
            job.gone.set()

    def _withdraw(self, job: _Job) -> bool:
        """Take a job off the waiting list; False if a loop is serving it already."""
        with self._lock:
            if job not in self._pending:
                return False
            self._pending.remove(job)
            return True

    # ----- the worker ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self._arrived.wait(timeout=60):
                with self._lock:
                    if not self._pending:  # idle for a minute: let the thread go
                        self._worker = None
                        return
                continue
            time.sleep(self.wait_s)  # let requests that arrive together catch up
            cohort = self._take_cohort()
            if cohort:
                self._serve(cohort)

    def _take_cohort(self) -> list[_Job]:
        """The oldest waiting job and the waiting jobs that sample like it and fit with it."""
        with self._lock:
            stopped = [job for job in self._pending if job.stopped()]
            for job in stopped:  # its consumer may still be waiting for word
                job.events.put(Cancelled("Generation was stopped."))
            self._pending = [job for job in self._pending if job not in stopped]
            if not self._pending:
                self._arrived.clear()
                return []
            first = self._pending[0]
            prompt_tokens = max(self.generator.prompt_tokens(job.request) for job in self._pending)
            room = self.generator.images_that_fit(first.request, prompt_tokens, most=64)
            cohort, images = [], 0
            if first.request.num_images > room:  # the oldest alone needs more than free memory: it runs chunked
                cohort = [first]
            else:
                for job in self._pending:
                    fits = images + job.request.num_images <= room
                    if len(cohort) < self.max_jobs and job.request.sampling == first.request.sampling and fits:
                        cohort.append(job)
                        images += job.request.num_images
            self._pending = [job for job in self._pending if job not in cohort]
            if not self._pending:
                self._arrived.clear()
            return cohort

    def _serve(self, cohort: list[_Job]) -> None:
        try:
            if len(cohort) == 1:  # alone: the ordinary path, with memory-sized chunks if needed
                job = cohort[0]
                for event in self.generator.stream(job.request, cancel=job.stopped, preview_budget=job.preview_budget):
                    job.events.put(event)
                return
            self._serve_together(cohort)
        except Exception as exc:  # every job of the cohort hears about it; the worker lives on
            for job in cohort:
                job.events.put(exc)

    def _serve_together(self, cohort: list[_Job]) -> None:
        slices = [Slice(job.request, job.request.seed, first=0, count=job.request.num_images) for job in cohort]
        logger.info("decoding %d requests (%d images) in one loop", len(cohort), sum(s.count for s in slices))
        try:
            self._decode_together(cohort, slices)
            return
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        release_memory(self.generator.device)  # outside the handler: the traceback no longer pins tensors
        # Redrawn in halves (one request alone halves its own images): per-image seeds keep the images.
        logger.warning("out of memory decoding %d requests together; going on in halves", len(cohort))
        half = len(cohort) // 2
        for part in (cohort[:half], cohort[half:]):
            waiting = [job for job in part if not job.served and not job.stopped()]
            if waiting:
                self._serve(waiting)

    def _decode_together(self, cohort: list[_Job], slices: list[Slice]) -> None:
        budget = PreviewBudget(min(job.preview_budget for job in cohort))
        steps = self.generator.decode_slices(slices, budget=budget,
                                             is_cancelled=lambda: all(job.stopped() for job in cohort))
        for done, previews in steps:
            for index, job in enumerate(cohort):
                if job.is_cancelled() and not job.gone.is_set():  # this one's own cancel or time limit
                    job.gone.set()
                    job.events.put(Cancelled("Generation was stopped."))
                elif not job.stopped():
                    job.events.put(Progress(done, self.generator.num_tokens, previews and previews[index]))
        for job, part in zip(cohort, slices):
            if job.gone.is_set():  # told already, or nobody is listening
                continue
            try:  # a job stopped by now (even during another's decode) hears Cancelled before any work
                images = self.generator.decode(part.tokens, is_cancelled=job.stopped)
            except Cancelled as stopped:
                job.events.put(stopped)
            else:
                job.events.put(GenerationResult(images=images, tokens=part.tokens.cpu(), seed=job.request.seed,
                                                params=self.generator.params(job.request, job.request.seed)))
            job.served = True
