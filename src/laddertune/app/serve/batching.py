"""Dynamic batching: classification requests that arrive within `max_wait_ms` of each other,
for any tasks, share one forward, and so one backbone pass.

Requests queue on the event loop; one loop task gathers them into a batch of at most
`max_batch_size` rows (or whatever came within the wait) and runs it on the batch thread, so
the event loop keeps accepting requests while the model computes. Completions have a batcher
(and so a thread) of their own, so a long answer never holds up classification.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class _Job:
    rows: list                      # (token ids, task names) per text
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers queued classification rows into batches for `run_batch(rows) -> answers`."""

    def __init__(self, run_batch, max_batch_size: int, max_wait_ms: float):
        self.run_batch = run_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="laddertune-batch")
        self.batches = 0               # batches run, for tests and the benchmark

    async def submit(self, rows: list) -> list:
        """Each row's answer, once the batch holding it has run."""
        job = _Job(rows, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def run(self) -> None:
        """Batch forever (the server cancels this task when it shuts down)."""
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather(loop)
            if not jobs:
                continue
            rows = [row for job in jobs for row in job.rows]
            try:
                answers = await loop.run_in_executor(self.thread, self.run_batch, rows)
            except Exception as err:  # noqa: BLE001 - each waiting request gets the error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.batches += 1
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(answers[start:start + len(job.rows)])
                start += len(job.rows)

    async def _gather(self, loop) -> list[_Job]:
        """The first waiting job, then others until the batch is full or the wait is over;
        jobs whose requests gave up (timed out) are dropped."""
        jobs = [await self.queue.get()]
        size = len(jobs[0].rows)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch_size:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            jobs.append(job)
            size += len(job.rows)
        return [job for job in jobs if not job.future.done()]

    def close(self) -> None:
        self.thread.shutdown(wait=True)
