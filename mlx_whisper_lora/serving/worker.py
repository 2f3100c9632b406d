"""The one thread that runs the model for the server: requests queue here and are decoded in batches.

Why one thread: a model (MLX or torch) computes one batch at a time anyway, and MLX arrays are best
kept on the thread that made them. The HTTP side only decodes uploads and waits on futures.
Requests that arrive together and share the call options (task, language, prompt, temperature,
word timing) are transcribed as one `transcribe_many` batch even when they ask for different
adapters: the adapter bank applies each row's own adapter (adapter_bank.py). A streamed request is
decoded alone, handing each window's segments out as they come. Adding or removing an adapter
runs on this thread too, between batches (`run_on_thread`): requests queued before a removal
finish with the adapter, those queued after it get AdapterGone.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import UserError
from ..adapter_bank.bank import BASE, AdapterBank
from ..tuner.memory_plan import release_free_heap


class ServerBusy(UserError):
    """More requests are waiting than --max-pending allows; the client should retry later."""


class AdapterGone(UserError):
    """The request's adapter was removed while the request waited (the server answers 404)."""


@dataclass(frozen=True)
class CallOptions:
    """What must be equal for requests to share a batch (openai-whisper's names)."""

    task: str = "transcribe"
    language: Optional[str] = None
    initial_prompt: Optional[str] = None
    temperature: Tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    word_timestamps: bool = False
    hotwords: Optional[str] = None  # faster-whisper's: words put in every window's prompt

    def as_kwargs(self) -> dict:
        return dict(task=self.task, language=self.language, initial_prompt=self.initial_prompt,
                    temperature=self.temperature, word_timestamps=self.word_timestamps, hotwords=self.hotwords)


def fallback_temperatures(start: float, increment: float = 0.2) -> Tuple[float, ...]:
    """The CLI's temperatures: `start`, then up by `increment` to 1.0 (openai-whisper's rule)."""
    if increment <= 0:
        return (float(start),)
    return tuple(float(t) for t in np.arange(start, 1.0 + 1e-6, increment))


@dataclass
class Job:
    audio: np.ndarray
    adapter: Optional[str]  # BASE or an adapter name
    options: CallOptions
    future: Future = field(default_factory=Future)
    on_segments: Optional[Callable[[List[dict]], None]] = None  # set: a streamed request, decoded alone


@dataclass
class Call:
    """A function to run on the worker thread between batches (loading or unloading an adapter)."""

    fn: Callable[[], object]
    future: Future = field(default_factory=Future)


class Worker:
    """Owns the model: `start()` loads it on the worker thread through `load()`, `submit()` queues."""

    def __init__(self, load: Callable[[], AdapterBank], max_batch: int = 8, max_pending: int = 64,
                 gather_seconds: float = 0.05):
        self._load = load
        self.max_batch = max(1, max_batch)
        self.max_pending = max(1, max_pending)
        self.gather_seconds = gather_seconds
        self._queue: "queue.Queue[Optional[Job | Call]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._load_error: Optional[BaseException] = None
        self.bank: Optional[AdapterBank] = None
        # adapters of the latest batches run (for tests and logs); bounded, as the server runs for days
        self.batches: "collections.deque[Tuple[Optional[str], ...]]" = collections.deque(maxlen=256)
        self.batch_listeners: List[Callable[[int], None]] = []  # called with each batch's size (metrics)

    @property
    def ready(self) -> bool:
        """The model is loaded and the thread runs."""
        return self.bank is not None and self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self, timeout: Optional[float] = None) -> "Worker":
        self._thread = threading.Thread(target=self._run, name="mlx-whisper-lora-worker", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if self._load_error is not None:
            raise self._load_error
        return self

    def stop(self, timeout: float = 30) -> None:
        """Finish what is queued (up to `timeout` seconds), then end the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=timeout)

    def submit(self, audio: np.ndarray, adapter: Optional[str], options: CallOptions,
               on_segments: Optional[Callable[[List[dict]], None]] = None) -> Future:
        """Queue a request; `on_segments` (from the worker thread) streams its segments as decoded."""
        self.bank.check(adapter)
        if self._queue.qsize() >= self.max_pending:
            raise ServerBusy(f"{self._queue.qsize()} requests are already waiting (--max-pending {self.max_pending}); "
                             "retry shortly")
        job = Job(audio, adapter, options, on_segments=on_segments)
        self._queue.put(job)
        return job.future

    def run_on_thread(self, fn: Callable[[], object]) -> Future:
        """Run `fn` on the worker thread after the requests queued before it (their batches are not mixed)."""
        call = Call(fn)
        self._queue.put(call)
        return call.future

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self.bank = self._load()
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._load_error = e
            self._ready.set()
            return
        self._ready.set()
        while True:
            first = self._queue.get()
            if first is None:
                return
            if isinstance(first, Call):
                self._call(first)
                continue
            jobs = [first]
            deadline = time.monotonic() + self.gather_seconds
            after = None  # a Call met while gathering: it runs after these jobs
            while len(jobs) < 4 * self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)
                    break
                if isinstance(job, Call):
                    after = job
                    break
                jobs.append(job)
            self._run_jobs(jobs)
            if after is not None:
                self._call(after)

    @staticmethod
    def _call(call: Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except BaseException as e:  # noqa: BLE001 - the caller gets the error; the thread keeps serving
            call.future.set_exception(e)

    def _run_jobs(self, jobs: List[Job]) -> None:
        groups: Dict[CallOptions, List[Job]] = {}
        for job in jobs:
            if job.on_segments is not None:
                self._run_batch(job.options, [job])
            else:
                groups.setdefault(job.options, []).append(job)
        for options, group in groups.items():
            for start in range(0, len(group), self.max_batch):
                self._run_batch(options, group[start:start + self.max_batch])

    def _run_batch(self, options: CallOptions, batch: List[Job]) -> None:
        from ..inference.transcriber import transcribe, transcribe_many

        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        for job in [job for job in live if job.adapter is not BASE and job.adapter not in self.bank.adapters]:
            job.future.set_exception(AdapterGone(f"model {job.adapter!r} was removed while this request waited"))
            live.remove(job)
        if not live:
            return
        names = [job.adapter for job in live]
        self.batches.append(tuple(names))
        for listener in self.batch_listeners:
            listener(len(live))
        try:
            with self.bank.lock:
                if live[0].on_segments is not None:  # a streamed request: alone, window by window
                    self.bank.select(names)
                    results = [transcribe(live[0].audio, self.bank.model, verbose=False, progress=False,
                                          on_segments=live[0].on_segments, **options.as_kwargs())]
                else:
                    results = transcribe_many([job.audio for job in live], self.bank.model, batch_size=len(live),
                                              verbose=False, progress=False,
                                              select_rows=lambda rows: self.bank.select([names[i] for i in rows]),
                                              **options.as_kwargs())
        except Exception as e:  # noqa: BLE001 - each request gets the error; the server keeps serving
            for job in live:
                job.future.set_exception(e)
            return
        finally:
            self.bank.select([BASE])
            release_free_heap()  # the batch's buffers, kept by glibc, back to the system
        for job, result in zip(live, results):
            job.future.set_result(result)
