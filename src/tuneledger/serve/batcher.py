"""The model's thread: requests that arrive within a short window generate together, across
versions (peft's mixed-adapter batches), and adapters go on and off the model between batches.

One thread owns the model, so a batch never meets an adapter half loaded or unloaded, and the
event loop (and /health) never waits behind the model. Each row keeps its own limits, sampling,
random generator, stop strings, deadline and cancellation (tuneledger.inference.generation.decode); a row
that ends is answered at once and leaves the batch, and queued requests join the running batch
between its steps (continuous batching).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneledger.inference.generation import Decoded, Row, decode
from tuneledger.serve.residents import Resident, ResidentVersions

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """A row to decode, the version it runs on, and where to report a failure of its batch."""

    row: Row
    resident: Resident
    on_failed: Callable[[BaseException], None]
    arrived: float = 0.0
    ended: bool = False


class Batcher:
    def __init__(
        self,
        residents: ResidentVersions,
        window_s: float,
        max_batch: int,
        on_batch: Callable[[int], None] = lambda size: None,
        kept: Callable[[], set[str]] = set,
    ):
        self.residents, self.window_s, self.max_batch = residents, window_s, max_batch
        self.on_batch = on_batch  # told each batch's size (the metrics' histogram)
        self.kept = kept  # content ids never to unload (the versions the server follows)
        self._jobs: collections.deque[Job] = collections.deque()
        self._tasks: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = (
            collections.deque()
        )
        self._changed = threading.Condition()
        self._stopping = False
        self.batches = self.joined = 0  # batches started; requests that joined one running
        self._thread = threading.Thread(target=self._loop, name="model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        job.arrived = time.monotonic()
        with self._changed:
            self._jobs.append(job)
            self._changed.notify()

    def call(self, work: Callable[[], Any]) -> Any:
        """Run `work` on the model's thread between batches; wait for its result (or exception)."""
        if threading.current_thread() is self._thread:
            return work()
        done: concurrent.futures.Future = concurrent.futures.Future()
        with self._changed:
            self._tasks.append((work, done))
            self._changed.notify()
        return done.result()

    def queued_content_ids(self) -> set[str]:
        with self._changed:
            return {job.resident.content_id for job in self._jobs}

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()

    # --- the model's thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._jobs or self._tasks or self._stopping)
                if self._stopping:
                    return
            self._run_tasks()
            batch = self._gather()
            if batch:
                self._run(batch)
            self.residents.evict_beyond_capacity(self.queued_content_ids() | self.kept())

    def _run_tasks(self) -> None:
        while True:
            with self._changed:
                if not self._tasks:
                    return
                work, done = self._tasks.popleft()
            try:
                done.set_result(work())
            except BaseException as exc:  # handed to the caller, who reports it
                done.set_exception(exc)

    def _gather(self) -> list[Job]:
        """The oldest job, and those that may share its batch: arrived within the window after it
        (or already waiting), up to max_batch, on adapters that can be mixed with its own."""
        with self._changed:
            if not self._jobs:
                return []
            until = self._jobs[0].arrived + self.window_s
            while (
                len(self._jobs) < self.max_batch
                and not self._tasks
                and (left := until - time.monotonic()) > 0
            ):
                self._changed.wait(left)
            head = self._jobs[0]
            batch = [job for job in self._jobs if _compatible(head.resident, job.resident)][: self.max_batch]
            for job in batch:
                self._jobs.remove(job)
        return batch

    def _run(self, batch: list[Job]) -> None:
        """Decode the batch; while it runs, queued requests that may share it join between steps
        (continuous batching), unless adapters wait to go on or off the model: then it drains."""
        head, running = batch[0].resident, list(batch)
        for job in batch:
            job.row.on_end = _marking_ended(job, job.row.on_end)

        def admit(decoding: int) -> list:
            joining = self._joining(head, self.max_batch - decoding)
            for job in joining:
                job.row.on_end = _marking_ended(job, job.row.on_end)
            running.extend(joining)
            return [job.row for job in joining]

        self.on_batch(len(batch))
        self.batches += 1
        try:
            decode(self.residents.model, [job.row for job in batch], admit=admit)
        except Exception as exc:  # each request still waiting gets the failure as its answer
            logger.error(f"a batch of {len(running)} failed: {type(exc).__name__}: {exc}")
            for job in running:
                if not job.ended:
                    job.on_failed(exc)

    def _joining(self, head: Resident, room: int) -> list[Job]:
        with self._changed:
            if room <= 0 or self._tasks or self._stopping:
                return []
            joining = [job for job in self._jobs if _compatible(head, job.resident)][:room]
            for job in joining:
                self._jobs.remove(job)
        if joining:
            self.joined += len(joining)
        return joining


def _compatible(head: Resident, other: Resident) -> bool:
    return other is head or (head.mixable and other.mixable)


def _marking_ended(job: Job, on_end: Callable[[Decoded], None] | None) -> Callable[[Decoded], None]:
    def ended(decoded: Decoded) -> None:
        job.ended = True
        if on_end is not None:
            on_end(decoded)

    return ended
