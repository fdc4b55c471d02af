"""Micro-batching: images from concurrent requests share one model call, on one inference thread.

A model classifies 32 images in little more time than one, so the service gathers the images that
arrive within `max_wait_ms` of each other (up to `max_batch`) and classifies them together. The
model runs on a thread of its own: the event loop only queues images and awaits futures, so it
keeps accepting and answering requests while the model works, and the model never runs twice at
once (a torch module is not meant to be called from several threads, and two calls would only
fight over the same cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from visionfit.prediction import stack_pixels


@dataclass
class _Item:
    pixels: torch.Tensor
    future: asyncio.Future[torch.Tensor]
    loop: asyncio.AbstractEventLoop


_STOP = object()


def _settle(future: asyncio.Future[torch.Tensor], result: torch.Tensor | BaseException) -> None:
    if future.done():  # the request went away (client disconnected); nobody waits for it
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Batcher:
    """Classify images one batch at a time on a single thread.

    `classify(batch)` maps a (N, 3, S, S) batch to an (N, classes) tensor (probabilities, on the
    CPU). `await batcher.submit(pixels)` returns one row per picture, in order.
    """

    def __init__(
        self,
        classify: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int,
        max_wait_ms: float,
    ) -> None:
        self.classify = classify
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="visionfit-inference", daemon=True)
        self._started = False

    def start(self) -> None:
        self._started = True
        self._thread.start()

    async def submit(self, pixels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Queue the pictures and wait for their rows; they may ride in different batches."""
        if not self._started:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        items = [_Item(picture, loop.create_future(), loop) for picture in pixels]
        for item in items:
            self._queue.put(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    def close(self) -> None:
        """Finish every image queued so far, then stop the thread."""
        if self._started:
            self._queue.put(_STOP)
            self._thread.join()
            self._started = False

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """The first item and those arriving within max_wait of it, up to max_batch; whether the
        stop marker was among them."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                # What is queued already is taken even after the deadline: it costs no waiting.
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        return batch, False

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._gather(first)  # type: ignore[arg-type]
            try:
                rows: list[torch.Tensor] | BaseException = list(
                    self.classify(stack_pixels([item.pixels for item in batch]))
                )
            except Exception as error:  # every request of the batch gets the failure as a 500
                rows = error
            for index, item in enumerate(batch):
                result = rows if isinstance(rows, BaseException) else rows[index]
                with contextlib.suppress(RuntimeError):  # a closed loop: the server is gone
                    item.loop.call_soon_threadsafe(_settle, item.future, result)
