"""A live `visionfit serve` process, spoken to over raw sockets: a body over the limit is refused
before it has arrived, and SIGTERM lets the request in flight finish, then exits 0 (Ctrl-C, the
same stop by SIGINT, ends the browser test's server)."""

from __future__ import annotations

import json
import select
import signal
import socket
import time

import pytest

pytest.importorskip("uvicorn")

from serve_support import image_bytes, start_server, stop_server, write_checkpoint

MEGABYTE = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (starting one takes seconds): the last test stops it."""
    process, url = start_server(
        write_checkpoint(tmp_path_factory.mktemp("serve-live") / "model.safetensors"), "--max-body-mb", "1"
    )
    yield process, url
    stop_server(process)


@pytest.fixture
def url(server):
    return server[1]


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def request_head(length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n{size}\r\n\r\n".encode()


def read_response(connection: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += connection.recv(65536)
    return int(head.split()[1]), body


def answered(connection: socket.socket) -> bool:
    return bool(select.select([connection], [], [], 0)[0])


def refuses_connections(url: str) -> bool:
    try:
        connect(url).close()
    except OSError:
        return True
    return False


def test_a_body_over_the_limit_is_refused_before_it_arrives(url):
    with connect(url) as connection:  # declared too large: answered without the body being sent
        connection.sendall(request_head(100 * MEGABYTE) + b"x" * 1000)
        status, _ = read_response(connection)
        assert status == 413
    with connect(url) as connection:  # chunked, no length given: refused once 1 MB has come
        connection.sendall(request_head(None))
        sent = 0
        chunk = b"y" * 65536
        while not answered(connection) and sent < 256 * MEGABYTE:
            try:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server has answered and closed this connection
                break
            sent += len(chunk)
        status, body = read_response(connection)
        assert status == 413 and "larger than 1 MB" in json.loads(body)["error"]
        assert sent < 64 * MEGABYTE  # the server stopped listening long before the sender stopped


def test_sigterm_finishes_the_request_in_flight_refuses_new_ones_and_exits_0(server):
    process, url = server
    picture = image_bytes("PNG", (48, 48))
    with connect(url) as connection:
        connection.sendall(request_head(len(picture)) + picture[:100])
        time.sleep(0.3)  # the server is now reading this request's body
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not refuses_connections(url):  # stops accepting at once ...
            assert time.monotonic() < deadline
            time.sleep(0.05)
        connection.sendall(picture[100:])  # ... but finishes this one
        status, body = read_response(connection)
    assert status == 200 and json.loads(body)[0]["class"] in {"apple", "grape", "lime"}
    assert process.wait(timeout=20) == 0
    assert "Finished server process" in process.stdout.read()
