"""Running the app on uvicorn, and stopping it gracefully.

Ctrl-C or SIGTERM: uvicorn stops accepting connections, lets the requests in flight finish (for at
most `GRACEFUL_SECONDS`), then runs the app's shutdown, where the batcher finishes its queue. The
process then exits 0: a stop that went as asked is not a failure.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp
from uvicorn.server import HANDLED_SIGNALS

from visionfit.errors import UserError

GRACEFUL_SECONDS = 30
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def network_warning(host: str) -> str | None:
    """The one-line warning for a host other than this machine's loopback, else None."""
    if host in LOOPBACK_HOSTS:
        return None
    return (
        f"visionfit: warning: listening on {host}: the service is reachable from the network "
        "(anyone who can reach this port can use the model; consider --api-key)"
    )


class GracefulServer(uvicorn.Server):
    """uvicorn's server, minus one thing: after its graceful shutdown uvicorn raises the signal
    again so that the process dies of it (status 130 or 143); here the shutdown is the answer to
    the signal, and the process exits normally."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
            yield
            return
        previous = {number: signal.signal(number, self.handle_exit) for number in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def run_server(app: ASGIApp, *, host: str, port: int, access_log: bool = False) -> None:
    """Serve `app` until Ctrl-C or SIGTERM, then shut down gracefully."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        server_header=False,
        log_level="info",
    )
    server = GracefulServer(config)
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
        # uvicorn has logged why (most often: the port is taken) and exits; say what to do.
        raise UserError(f"could not start serving on {host}:{port} (see above): is --port free?") from None
