"""`ta serve-bench`: a real `ta serve` process under many clients at once, through gradio's own client.

The server runs in a child process so its resident memory is its own (read from /proc, so Linux only).
Three phases share one server: a warm-up of sequential uploads (memory is read after it), the load
(CLIENTS threads, each its own gradio client, each uploading UPLOADS clips one after another), then
sequential uploads up to TOTAL requests (memory is read again). Both readings are taken with the
server idle, so their difference is what the load left behind, not what was in flight.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

RATE = 16000
READY_TIMEOUT_S = 300.0


@dataclass
class BenchResult:
    model: str
    clients: int
    uploads_per_client: int
    requests: int = 0
    failed: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # the load phase's, one per upload
    single_client_latencies_s: list[float] = field(default_factory=list)  # the sequential phases'
    wall_s: float = 0.0  # the load phase's
    rss_mb: dict[str, float] = field(default_factory=dict)  # {"after 20": ..., "after 200": ...}

    def summary(self) -> dict[str, Any]:
        latencies = np.array(self.latencies_s or [np.nan])
        first, last = self.rss_mb.values()
        return {
            "model": self.model,
            "clients": self.clients,
            "uploads_per_client": self.uploads_per_client,
            "requests": self.requests,
            "failed": len(self.failed),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
            "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
            "latency_max_s": round(float(latencies.max()), 3),
            "single_client_p50_s": round(float(np.median(self.single_client_latencies_s or [np.nan])), 3),
            "throughput_per_s": round(len(self.latencies_s) / self.wall_s, 3) if self.wall_s else 0.0,
            "rss_mb": self.rss_mb,
            "rss_growth_pct": round(100 * (last - first) / first, 1),
            "failures": self.failed[:10],
        }


def write_clips(directory: Path, count: int = 9, shortest: float = 2.0, longest: float = 10.0) -> list[Path]:
    """`count` noisy tones from `shortest` to `longest` seconds, 16 kHz mono WAV, deterministic."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, seconds in enumerate(np.linspace(shortest, longest, count)):
        t = np.arange(int(seconds * RATE)) / RATE
        noise = np.random.default_rng(i).standard_normal(t.shape) * 0.02
        wave = 0.3 * np.sin(2 * np.pi * (180 + 40 * i) * t) + noise
        path = directory / f"clip-{seconds:04.1f}s.wav"
        sf.write(path, wave.astype(np.float32), RATE)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def start_server(model: str, port: int, serve_args: list[str], log: Path) -> subprocess.Popen:
    """`ta serve` in a child process, its output to `log` (a pipe nobody reads would fill and stall it)."""
    command = [sys.executable, "-c", "from tiny_audio.cli import app; app()", "serve", model, "--port", str(port)]
    with log.open("w") as handle:
        return subprocess.Popen([*command, *serve_args], stdout=handle, stderr=subprocess.STDOUT)


def connect(url: str, server: subprocess.Popen, log: Path) -> Any:
    """A gradio client, once the server answers; the server's own error if it died on the way."""
    import httpx
    from gradio_client import Client

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"ta serve exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            return Client(url, verbose=False)
        except (httpx.HTTPError, ValueError, ConnectionError):
            time.sleep(1.0)
    raise TimeoutError(f"ta serve did not answer at {url} within {READY_TIMEOUT_S:.0f} s")


def upload(client: Any, clip: Path) -> str:
    from gradio_client import handle_file

    return client.predict(handle_file(str(clip)), api_name="/transcribe")


def sequential(url: str, clips: list[Path], count: int, result: BenchResult) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    for i in range(count):
        _timed(client, clips[i % len(clips)], result, result.single_client_latencies_s)


def concurrent(url: str, clips: list[Path], result: BenchResult) -> None:
    from gradio_client import Client

    def one_client(index: int) -> None:
        client = Client(url, verbose=False)
        for k in range(result.uploads_per_client):
            _timed(client, clips[(index + k) % len(clips)], result, result.latencies_s)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(result.clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - start


_lock = threading.Lock()


def _timed(client: Any, clip: Path, result: BenchResult, latencies: list[float]) -> None:
    start = time.perf_counter()
    try:
        upload(client, clip)
        error = None
    except Exception as exc:  # every failure is counted and its message kept for the report
        error = f"{clip.name}: {type(exc).__name__}: {exc}"
    with _lock:
        result.requests += 1
        if error:
            result.failed.append(error)
        else:
            latencies.append(time.perf_counter() - start)


def run_bench(
    model: str,
    workdir: Path,
    clients: int = 16,
    uploads: int = 10,
    warmup: int = 20,
    total: int = 200,
    serve_args: list[str] | None = None,
) -> BenchResult:
    """Start `ta serve MODEL`, drive it through the three phases, stop it; the figures."""
    if total < warmup + clients * uploads:
        raise ValueError(f"total={total} must be at least warmup + clients × uploads = {warmup + clients * uploads}")
    clips = write_clips(workdir / "clips")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = workdir / "server.log"
    server = start_server(model, port, serve_args or [], log)
    result = BenchResult(model=model, clients=clients, uploads_per_client=uploads)
    try:
        connect(url, server, log)
        sequential(url, clips, warmup, result)
        result.rss_mb[f"after {result.requests}"] = round(rss_mb(server.pid), 1)
        concurrent(url, clips, result)
        sequential(url, clips, total - result.requests, result)
        result.rss_mb[f"after {result.requests}"] = round(rss_mb(server.pid), 1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return result


def write_report(result: BenchResult, out: Path) -> dict[str, Any]:
    summary = result.summary()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**summary, "latencies_s": [round(x, 4) for x in result.latencies_s]}, indent=2))
    return summary
