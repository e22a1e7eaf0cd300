"""Request batching: concurrent requests gathered into one engine call (`BatchDecode`), one worker thread.

Admission: `submit(job)` appends to a FIFO queue of at most `max_queue` waiting jobs, else raises `QueueFull`
(the server answers 503 with `Retry-After`): the queue never grows without bound.

Gathering: the worker takes the oldest waiting job (the head) and the queued jobs with the same key (sampling
settings and prompt-length bucket: `Prepared.key`) in arrival order, up to `max_batch`. It waits for companions
until `wait_ms` after the head arrived, or until `max_batch` compatible jobs are queued — jobs that queued while
the previous call ran usually start at once. Every engine call is led by the oldest waiting job, so a job only
ever waits for calls led by jobs that arrived before it: never for a batch that started after it, and never
indefinitely. `max_batch=1` turns batching off.

Each call streams: after the prefill and after every decode step, each row's new token goes through its
`StopStreamer` and the text that became final is sent to the job (`("delta", text)`); a row ends at EOS
(`finish_reason` "stop"), at a stop string ("stop"), at its budget ("length"), or when its job is cancelled (the
client disconnected) — that row is marked done on the device, and a call whose rows are all done ends.
Events reach the job's asyncio queue with `loop.call_soon_threadsafe`; the last is `("done", reason, tokens)` or
`("error", message)` (an engine failure fails that call's jobs only; the worker keeps serving).

`stats()`: engine_calls (calls of the batched engine so far), requests, cancelled, largest_batch, tokens
(generated so far), queued, running.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import threading
import time
from typing import Optional

from lav2_jax.serve.decode import BatchDecode, StopStreamer
from lav2_jax.serve.inputs import Prepared


class QueueFull(RuntimeError):
    """The waiting queue is at `max_queue`."""


@dataclasses.dataclass(eq=False)
class Job:
    """One request in flight: its prepared inputs and the asyncio queue its events go to."""

    prepared: Prepared
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    arrived: float = dataclasses.field(default_factory=time.monotonic)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    tokens: int = 0

    @classmethod
    def create(cls, prepared: Prepared) -> "Job":
        return cls(prepared, asyncio.get_running_loop(), asyncio.Queue())

    def send(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed (server shutting down)
            pass


class Batcher:
    def __init__(self, bundle, max_batch: int = 8, wait_ms: float = 5.0, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.bundle, self.max_batch, self.wait_s, self.max_queue = bundle, max_batch, wait_ms / 1000.0, max_queue
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._counts = {"engine_calls": 0, "requests": 0, "cancelled": 0, "largest_batch": 0, "running": 0,
                        "tokens": 0}

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="lav2-serve-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # --- admission -----------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (the limit is {self.max_queue})")
            self._queue.append(job)
            self._counts["requests"] += 1
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it still waits, else stop its row at the next step."""
        job.cancelled.set()
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self._counts["cancelled"] += 1

    def stats(self) -> dict:
        with self._cond:
            return {**self._counts, "queued": len(self._queue)}

    # --- the worker ----------------------------------------------------------------------------------------------
    def _take(self) -> Optional[list[Job]]:
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                head = self._queue[0]
                group = [j for j in self._queue if j.prepared.key == head.prepared.key][:self.max_batch]
                left = head.arrived + self.wait_s - time.monotonic()
                if len(group) >= self.max_batch or left <= 0:
                    for j in group:
                        self._queue.remove(j)
                    self._counts["running"] = len(group)
                    return group
                self._cond.wait(left)

    def _work(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            try:
                self.run(group)
            except Exception as e:  # noqa: BLE001 - one failing call must not take the server down
                for job in group:
                    job.send("error", f"generation failed: {type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._counts["running"] = 0

    def run(self, group: list[Job]) -> None:
        """One engine call for `group` (same key): prefill, then decode steps until every row has ended."""
        p0 = group[0].prepared
        with self._cond:
            self._counts["engine_calls"] += 1
            self._counts["largest_batch"] = max(self._counts["largest_batch"], len(group))
        seed = p0.seed if p0.seed is not None else random.getrandbits(31)
        dec = BatchDecode(self.bundle, [j.prepared.prompt for j in group], [j.prepared.image for j in group],
                          [j.prepared.budget for j in group], p0.temperature, p0.top_p, seed)
        streamers = [StopStreamer(self.bundle.tokenizer, j.prepared.stops, lstrip=True) for j in group]
        live = set(range(len(group)))
        while True:
            tok, new, done = dec.poll()
            ended = []
            for i in sorted(live):
                job, streamer = group[i], streamers[i]
                if job.cancelled.is_set():
                    with self._cond:
                        self._counts["cancelled"] += 1
                    ended.append(i)
                    continue
                if new[i] and int(tok[i]) != dec.eos_id:
                    job.tokens += 1
                    with self._cond:
                        self._counts["tokens"] += 1
                    piece = streamer.push(int(tok[i]))
                    if piece:
                        job.send("delta", piece)
                if streamer.stopped or (new[i] and int(tok[i]) == dec.eos_id):
                    job.send("done", "stop", job.tokens)
                    ended.append(i)
                elif done[i] or dec.finished:
                    tail = streamer.finish()
                    if tail:
                        job.send("delta", tail)
                    job.send("done", "length", job.tokens)
                    ended.append(i)
            live -= set(ended)
            if not live or not dec.advance(stop=ended):
                return
