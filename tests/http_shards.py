"""A loopback HTTP server for dataset shards, with the faults a real data host has.

It answers HEAD and GET (with byte ranges, as fsspec asks for them) for the files of one directory,
on 127.0.0.1 only. Faults, both deterministic:
- `reset_every=n`: every n-th GET sends half of its body, then resets the connection (RST).
- `stall_once=True`: the first ranged GET (a file read) after `stall_after` of them sends half its body,
  then stops sending until `stall_seconds` pass or the server stops (the client's read timeout fires).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from tests.data_helpers import sentence, tone


def write_parquet_shards(
    directory: Path, split: str, shards: int, per_shard: int, *, seconds: float = 0.6
) -> list[str]:
    """`<split>-0000i.parquet` files holding {"audio": {"bytes", "path"}, "text"} rows; their names."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for shard in range(shards):
        audio, text = [], []
        for row in range(per_shard):
            i = shard * per_shard + row
            path = directory / f"{split}_{i:04d}.flac"
            sf.write(path, tone(seconds, freq=200.0 + 7 * i), 16000)
            audio.append({"bytes": path.read_bytes(), "path": path.name})
            path.unlink()
            text.append(sentence(i))
        name = f"{split}-{shard:05d}.parquet"
        # Small row groups, so a shard is read in several pieces.
        pq.write_table(pa.table({"audio": audio, "text": text}), directory / name, row_group_size=2)
        names.append(name)
    return names


class FaultyServer:
    """Serve `root` on 127.0.0.1; `url(name)` is a file's address. Use as a context manager."""

    def __init__(
        self,
        root: Path,
        *,
        reset_every: int = 0,
        stall_once: bool = False,
        stall_after: int = 0,
        stall_seconds: float = 5.0,
    ) -> None:
        self.root = root
        self.reset_every = reset_every
        self.stall_once, self.stall_after, self.stall_seconds = stall_once, stall_after, stall_seconds
        self.gets = 0
        self.ranged_gets = 0  # reads of a file's bytes, as opposed to `datasets` peeking at its schema
        self.resets = 0
        self.stalls = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering: later connections are refused."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            # Kept-alive connections would go on being served by their threads: cut them too.
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)

    def _fault(self, ranged: bool) -> str | None:
        with self._lock:
            self.gets += 1
            if self.reset_every and self.gets % self.reset_every == 0:
                self.resets += 1
                return "reset"
            if ranged:
                self.ranged_gets += 1
            if self.stall_once and not self.stalls and ranged and self.ranged_gets > self.stall_after:
                self.stalls += 1
                return "stall"
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                if server._stopping.is_set():
                    self.close_connection = True
                    return
                path = server.root / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, end = 0, len(data)
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    end = min(len(data), int(match.group(2)) + 1 if match.group(2) else len(data))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                if not body:
                    return
                chunk = data[start:end]
                fault = server._fault(ranged=match is not None)
                if fault is None:
                    self.wfile.write(chunk)
                    return
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                if fault == "stall":
                    server._stopping.wait(server.stall_seconds)
                # SO_LINGER 0: close with RST, as a dropped connection looks to the client.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

        return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the resets are on purpose; a traceback per reset would bury the test output
