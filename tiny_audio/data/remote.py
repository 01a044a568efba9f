"""Dataset files on a web server or an object store: naming them, reaching them, riding out faults.

A dataset entry whose `path` is a URL (http(s)://, s3://, gs://) lists its files per split in
`data_files`, relative to that URL or absolute; `{00000..00127}` expands to a numbered range.
`datasets` streams them through fsspec. Faults are handled in one place, the cursor's read loop
(`Retries`): a failed read reopens the file just after the last record read (a `datasets`
position), so a retried record is read exactly once; after `data.remote.retries` consecutive failures the run stops
with one line. `datasets`' own fixed-interval retries are turned off for such runs: they would
multiply with ours and sleep 5 s even before giving up.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import fsspec

from tiny_audio.config import DatasetConfig, RemoteConfig

logger = logging.getLogger(__name__)
# Scheme -> the fsspec package that reads it (http comes with fsspec through aiohttp).
SCHEMES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs"}
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
# Client errors that no retry can fix; other HTTP statuses (5xx, 408, 429) are worth another try.
_PERMANENT_STATUSES = range(400, 500)
_TRANSIENT_STATUSES = (408, 429)


class RemoteDataError(ValueError):
    """A remote dataset entry that is misconfigured or cannot be read; the message is one line."""


class RemoteReadError(ConnectionError):
    """Reads of a remote file kept failing; the message is one line naming the URL and the retries."""


def scheme(path: str) -> str | None:
    """The URL scheme when `path` is a remote location this module reads, else None."""
    match = re.match(r"([a-z0-9]+)://", path)
    return match.group(1) if match and match.group(1) in SCHEMES else None


def is_remote(path: str) -> bool:
    return scheme(path) is not None


def expand(pattern: str) -> list[str]:
    """`train-{00000..00002}.parquet` -> three names, zero-padded to the width written."""
    match = _RANGE.search(pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for i in range(int(first), int(last) + 1) for name in expand(f"{head}{i:0{width}d}{tail}")]


@dataclass(frozen=True)
class RemoteSplit:
    builder: str  # a `datasets` packaged builder: parquet or json
    urls: tuple[str, ...]


def remote_split(dataset: DatasetConfig, index: int, split: str) -> RemoteSplit:
    """The files of one split of a remote entry, checked: one format, a readable scheme."""
    where = f"data.datasets[{index}]"
    if split not in dataset.data_files:
        raise RemoteDataError(
            f"{where}.data_files has no split '{split}' (path {dataset.path}); "
            f"its splits are: {', '.join(dataset.data_files) or 'none'}"
        )
    base = dataset.path.rstrip("/")
    urls = tuple(
        url if is_remote(url) else f"{base}/{url.lstrip('/')}"
        for pattern in dataset.data_files[split]
        for url in expand(pattern)
    )
    if not urls:
        raise RemoteDataError(f"{where}.data_files.{split} is empty; list its parquet or jsonl files")
    suffixes = {_suffix(url) for url in urls}
    builders = {BUILDERS.get(suffix) for suffix in suffixes}
    if None in builders or len(builders) != 1:
        raise RemoteDataError(
            f"{where}.data_files.{split} mixes or has unsupported file types ({', '.join(sorted(suffixes))}); "
            "use only .parquet or only .jsonl files per split"
        )
    for url in urls:
        require_filesystem(url, where)
    return RemoteSplit(builders.pop(), urls)  # type: ignore[arg-type]


def _suffix(url: str) -> str:
    name = url.split("?", 1)[0].rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1] if "." in name else "(none)"


def require_filesystem(url: str, where: str) -> None:
    """s3:// and gs:// need s3fs and gcsfs, which tiny-audio does not install for everyone."""
    name = scheme(url)
    if name is None:
        raise RemoteDataError(f"{where}: '{url}' is not an http(s)://, s3:// or gs:// URL")
    package = SCHEMES[name]
    if importlib.util.find_spec(package) is None:
        raise RemoteDataError(f"{where}: reading {name}:// files needs the {package} package: pip install {package}")


def storage_options(remote: RemoteConfig) -> dict[str, Any]:
    """fsspec options per scheme: the connect and read timeouts, so a stalled host fails a read."""
    import aiohttp  # fsspec's http backend; imported only for remote data

    # total=None: a large shard may take long; what must not happen is a long silence.
    http = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(sock_connect=remote.timeout, sock_read=remote.timeout)}}
    s3 = {"config_kwargs": {"connect_timeout": remote.timeout, "read_timeout": remote.timeout}}
    return {"http": http, "https": http, "s3": s3}


def use_own_retries() -> None:
    """One retry loop (ours, with backoff and a count) instead of `datasets`' nested fixed ones.

    Set in the main process before loader workers fork, which inherit it.
    """
    datasets.config.STREAMING_READ_MAX_RETRIES = 1
    datasets.config.STREAMING_OPEN_MAX_RETRIES = 1
    for name in (
        "STREAMING_READ_RETRY_INTERVAL",
        "STREAMING_READ_SERVER_UNAVAILABLE_RETRY_INTERVAL",
        "STREAMING_READ_RATE_LIMIT_RETRY_INTERVAL",
        "STREAMING_OPEN_RETRY_INTERVAL",
    ):
        setattr(datasets.config, name, 0)


def transient_cause(error: BaseException) -> BaseException | None:
    """The dropped connection, timeout or 5xx/408/429 answer behind `error` (the innermost), or None.

    Innermost, because wrappers (`datasets`' "Server Disconnected", fsspec's FileNotFoundError for a
    host it could not reach) say less than what they wrap.
    """
    found, seen = None, set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = getattr(current, "status", None)
        if isinstance(status, int) and status in _PERMANENT_STATUSES and status not in _TRANSIENT_STATUSES:
            return None
        if isinstance(current, (ConnectionError, TimeoutError)) or _is_client_error(current):
            found = current
        current = current.__cause__ or current.__context__
    return found


def _is_client_error(error: BaseException) -> bool:
    try:
        from aiohttp import ClientError
    except ImportError:  # pragma: no cover - aiohttp comes with datasets
        return False
    return isinstance(error, ClientError)


def describe(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:200]}"


@dataclass
class Retries:
    """Consecutive failed reads of one source, the waits between them, and when to give up."""

    config: RemoteConfig
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    failures: int = 0
    waited: float = 0.0

    def succeeded(self) -> None:
        self.failures, self.waited = 0, 0.0

    def failed(self, error: BaseException, url: str) -> None:
        """Wait before the next attempt, or raise RemoteReadError when the retries are spent."""
        cause = transient_cause(error)
        if cause is None:
            raise error
        if self.failures >= self.config.retries:
            raise RemoteReadError(
                f"cannot read {url}: {self.failures} retries over {self.waited:.0f} s failed "
                f"(last error {describe(cause)})"
            ) from error
        delay = min(self.config.backoff * 2**self.failures, self.config.max_backoff)
        self.failures += 1
        self.waited += delay
        logger.warning(
            f"read of {url} failed ({describe(cause)}); retry {self.failures}/{self.config.retries} in {delay:.1f} s"
        )
        self.sleep(delay)


def current_file(records: datasets.IterableDataset | None) -> str | None:
    """The file a `datasets` stream is reading (from its position), for error messages; None if unknown."""
    try:
        return _current_file(records)
    except (AttributeError, KeyError, TypeError, ValueError):  # `datasets` internals moved: name no file
        return None


def _current_file(records: Any) -> str | None:
    iterable: Any = records._ex_iterable
    while getattr(iterable, "ex_iterable", None) is not None:
        iterable = iterable.ex_iterable
    files = getattr(iterable, "kwargs", {}).get("files")
    state: Any = records.state_dict()
    while isinstance(state, dict) and "shard_idx" not in state:
        state = state.get("examples_iterable")
    if not files or not isinstance(state, dict):
        return None
    shard = min(int(state["shard_idx"]), len(files) - 1)
    return str(files[shard])


def first_failure(urls: tuple[str, ...] | list[str], remote: RemoteConfig) -> tuple[str, BaseException] | None:
    """The first URL that does not answer, and its error (a 404 or a network error), else None."""
    options = storage_options(remote)
    for url in urls:
        name = scheme(url) or "file"
        try:
            fsspec.filesystem(name, **options.get(name, {})).info(url)
        except Exception as error:  # any failure means the run would not read it
            return url, error
    return None
