"""What a person watching the terminal sees: a progress bar on a terminal, plain lines elsewhere.

Messages go through the `visionfit` logger so that library users can silence or redirect them;
`setup_logging` gives it a plain stdout handler when the application has configured none.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

logger = logging.getLogger("visionfit")


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is at the time of each message (it may be replaced after
    the handler is made, by pytest or by a notebook)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging() -> None:
    """Print the `visionfit` logger's INFO messages as bare lines unless someone configured it."""
    if logger.handlers:
        return
    handler = _StdoutHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def notice(text: str) -> None:
    """A one-line notice on stderr that must reach the user whoever configured logging (say, that
    a checkpoint's code is about to run), and that keeps stdout clean for `--json`."""
    print(f"visionfit: {text}", file=sys.stderr)


def is_terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


class EpochProgress:
    """One epoch's progress: a tqdm bar (running loss, images/s, ETA) on a terminal; otherwise no
    bar, only the lines passed to `line` (the every-N-steps loss lines and the epoch summary)."""

    def __init__(
        self, total_steps: int, description: str, *, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = is_terminal(self.stream) if enabled is None else enabled
        self.started = time.perf_counter()
        self.images = 0
        self._last_postfix = 0.0
        self.bar = tqdm(
            total=total_steps,
            desc=description,
            unit="step",
            file=self.stream,
            leave=False,
            dynamic_ncols=True,
            disable=not self.enabled,
        )

    @property
    def images_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.images / elapsed if elapsed > 0 else 0.0

    def wants_postfix(self) -> bool:
        """True about twice a second while the bar is shown: reading the loss costs a device sync."""
        now = time.perf_counter()
        if self.enabled and now - self._last_postfix >= 0.5:
            self._last_postfix = now
            return True
        return False

    def advance(self, images: int, running_loss: float | None = None) -> None:
        self.images += images
        if running_loss is not None:
            self.bar.set_postfix_str(
                f"loss {running_loss:.4f}, {self.images_per_second:,.0f} img/s", refresh=False
            )
        self.bar.update(1)

    def line(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text, file=sys.stdout)
        else:
            logger.info(text)

    def close(self) -> None:
        self.bar.close()
