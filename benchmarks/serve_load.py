"""Load on `visionfit serve`: concurrent clients posting CIFAR-10 test JPEGs to a live server.

Measures, for each number of clients (each a keep-alive connection posting one JPEG per request as
the request body, as fast as answers come): images/s, latency p50/p99, errors (any answer but
200, or a failed connection); then the server's peak memory (VmHWM) and its growth (VmRSS) over
`--growth-requests` more requests. Before the server starts, it measures what `visionfit predict`
does offline on the same files (its predictor over them, after loading, like predict_speed.py), the
yardstick for the served rate. The clients run on the same machine as the server and take some of
its CPU; say so with the numbers.

    python benchmarks/serve_load.py runs/fast/checkpoints/best.safetensors \\
        --images ~/.cache/visionfit-dev/cifar10/test --clients 1,8,32 --duration 30
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from visionfit.prediction import expand_inputs, load

LIMIT_LOCK = threading.Lock()  # guards the shared request budget and the tallies


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


def memory_kib(pid: int, key: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a Linux process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for process {pid}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(checkpoint: str, port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "visionfit", "serve", checkpoint, "--port", str(port), *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}: {' '.join(command)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start within 120 s")


def client(
    port: int, bodies: list[bytes], offset: int, stop: threading.Event, limit: list[int], tally: Tally
) -> None:
    """Post bodies[offset], bodies[offset + 1], ... until `stop` is set (or `limit[0]` runs out)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    index = offset
    while not stop.is_set():
        if limit:
            with LIMIT_LOCK:
                if limit[0] <= 0:
                    break
                limit[0] -= 1
        body = bodies[index % len(bodies)]
        index += 1
        started = time.perf_counter()
        try:
            connection.request("POST", "/predict?top_k=1", body=body, headers={"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        elapsed = time.perf_counter() - started
        with LIMIT_LOCK:
            if ok:
                tally.latencies.append(elapsed)
            else:
                tally.errors += 1
    connection.close()


def run_clients(
    port: int, bodies: list[bytes], clients: int, duration: float | None, requests: int | None
) -> tuple[Tally, float]:
    """`clients` threads for `duration` seconds, or until `requests` have been sent."""
    tally, stop = Tally(), threading.Event()
    limit = [requests] if requests is not None else []
    threads = [
        threading.Thread(target=client, args=(port, bodies, number * 97, stop, limit, tally))
        for number in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    if duration is not None:
        time.sleep(duration)
        stop.set()
    for thread in threads:
        thread.join()
    return tally, time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def offline_rate(checkpoint: str, files: list[str], precision: str, repeats: int) -> float:
    predictor = load(checkpoint, precision=precision)
    list(predictor.predict_sources(files[:256]))  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _prediction in predictor.predict_sources(files):
            pass
        rates.append(len(files) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint or run folder")
    parser.add_argument("--images", default=str(Path("~/.cache/visionfit-dev/cifar10/test").expanduser()))
    parser.add_argument("--count", type=int, default=5000, help="files used (sorted; default 5000)")
    parser.add_argument("--clients", default="1,8,32", help="client counts, one phase each")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--growth-requests", type=int, default=10_000, help="requests for the memory growth")
    parser.add_argument("--growth-clients", type=int, default=8)
    parser.add_argument("--precision", default="auto", help="for both the server and the offline rate")
    parser.add_argument("--offline-repeats", type=int, default=3)
    parser.add_argument("--server-arg", action="append", default=[], help="more `visionfit serve` flags")
    arguments = parser.parse_args()

    files = expand_inputs([arguments.images])[: arguments.count]
    bodies = [Path(file).read_bytes() for file in files]
    offline = offline_rate(arguments.checkpoint, files, arguments.precision, arguments.offline_repeats)
    print(f"offline (visionfit predict's predictor, {len(files)} files): {offline:.0f} images/s", flush=True)

    port = free_port()
    server = start_server(
        arguments.checkpoint, port, ["--precision", arguments.precision, *arguments.server_arg]
    )
    try:
        run_clients(port, bodies, 4, None, 200)  # warm-up
        print("clients  requests  images/s  p50 ms  p99 ms  errors", flush=True)
        rates = {}
        for clients in [int(text) for text in arguments.clients.split(",")]:
            tally, elapsed = run_clients(port, bodies, clients, arguments.duration, None)
            rates[clients] = len(tally.latencies) / elapsed
            p50, p99 = (1000 * percentile(tally.latencies, fraction) for fraction in (0.5, 0.99))
            requests = len(tally.latencies) + tally.errors
            rate, errors = rates[clients], tally.errors
            print(
                f"{clients:7d}  {requests:8d}  {rate:8.0f}  {p50:6.1f}  {p99:6.1f}  {errors:6d}", flush=True
            )
        before = memory_kib(server.pid, "VmRSS")
        tally, _ = run_clients(port, bodies, arguments.growth_clients, None, arguments.growth_requests)
        after = memory_kib(server.pid, "VmRSS")
        print(f"server peak memory (VmHWM): {memory_kib(server.pid, 'VmHWM') / 1024:.0f} MiB")
        growth = (after - before) / 1024
        print(
            f"memory growth over {arguments.growth_requests} more requests: {growth:+.1f} MiB "
            f"(VmRSS {before / 1024:.0f} -> {after / 1024:.0f} MiB; {tally.errors} errors)"
        )
        most = max(rates)
        print(f"at {most} clients: {rates[most] / offline:.0%} of the offline rate")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
        print(f"server stopped with exit status {code}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
