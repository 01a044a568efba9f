"""Named English test sets for `ta eval -d NAME`: how a name, directory or Hub id becomes one, and if it is reachable.

Each entry was checked against its dataset card (configs, splits, column names). The ESB sets
come from `hf-audio/esb-datasets-test-only-sorted`, the parquet copy of the Open ASR Leaderboard's
test sets: one config per corpus, one `test` split (LibriSpeech: `test.clean`, `test.other`),
columns `audio`, `text`, `id`, `dataset`, `audio_length_s`. That repository is gated: accept its
terms on the Hub and log in (`hf auth login`) before using those names. Its splits are sorted
longest clip first, so `-n N` scores the N longest clips; use `-n 0` for the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tiny_audio.data.local import find_local_splits

ESB = "hf-audio/esb-datasets-test-only-sorted"
# The Hub answers in well under a second; anything slower is treated as unreachable.
HUB_PROBE_TIMEOUT_S = 10.0
# Without --split, a local directory is scored on the first of these it has.
LOCAL_SPLIT_PREFERENCE = ("test", "validation", "dev")
ALL_SPLITS = "all"  # --split all: every split of a local directory


class UnknownTestSet(ValueError):
    """A -d value that is neither a registered name, a local directory nor a Hub id."""


class TestSetUnavailable(ValueError):
    """A test set that cannot be opened; the message names it, its source and split, and the fix."""

    __test__ = False


@dataclass(frozen=True)
class TestSet:
    name: str  # how tables and JSON name it
    path: str  # Hub dataset id or local directory
    config: str | None
    split: str
    audio_column: str = "audio"
    text_column: str = "text"
    gated: bool = False  # the Hub asks users to accept terms before downloading

    __test__ = False  # not a pytest test class, despite the name

    @property
    def source(self) -> str:
        """e.g. 'speechbrain/LoquaciousSet (config medium, split dev)'."""
        config = f"config {self.config}, " if self.config else ""
        return f"{self.path} ({config}split {self.split})"


def _esb(name: str, config: str, split: str = "test") -> TestSet:
    return TestSet(name, ESB, config, split, gated=True)


TEST_SETS: dict[str, TestSet] = {
    # The course's training set; its dev and test splits are shared by every config.
    "loquacious-dev": TestSet("loquacious-dev", "speechbrain/LoquaciousSet", "medium", "dev", "wav", "text"),
    "loquacious-test": TestSet("loquacious-test", "speechbrain/LoquaciousSet", "medium", "test", "wav", "text"),
    # The original LibriSpeech release: configs `clean` and `other`, each with a `test` split.
    "librispeech-clean": TestSet("librispeech-clean", "openslr/librispeech_asr", "clean", "test"),
    "librispeech-other": TestSet("librispeech-other", "openslr/librispeech_asr", "other", "test"),
    "ami": _esb("ami", "ami"),
    "common-voice": _esb("common-voice", "common_voice"),
    "earnings22": _esb("earnings22", "earnings22"),
    "gigaspeech": _esb("gigaspeech", "gigaspeech"),
    "spgispeech": _esb("spgispeech", "spgispeech"),
    "tedlium": _esb("tedlium", "tedlium"),
    "voxpopuli": _esb("voxpopuli", "voxpopuli"),
}
# Names that stand for several entries; `all` is every entry above.
GROUPS: dict[str, tuple[str, ...]] = {
    "loquacious": ("loquacious-dev",),
    "librispeech": ("librispeech-clean", "librispeech-other"),
    "esb": tuple(name for name in TEST_SETS if not name.startswith("loquacious")),
    "all": tuple(TEST_SETS),
}


def known_names() -> str:
    return ", ".join([*TEST_SETS, *GROUPS])


def resolve(
    values: list[str],
    *,
    split: str | None = None,
    config: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
) -> list[TestSet]:
    """Each -d value as test sets, in order, without duplicates.

    A value is a registered name or group, else a local directory (its `split`; every split for
    `split="all"`; every condition of a `ta data robust` set; or the first of LOCAL_SPLIT_PREFERENCE
    it has, or its only split), else a Hub id `owner/name` read with
    `config`, `split` (default `test`) and the given columns. Registered entries keep their own
    config, split and columns, which the options do not change.
    """
    found: dict[str, TestSet] = {}
    for value in values:
        for test_set in _resolve_one(value, split, config, audio_column, text_column):
            found.setdefault(test_set.name, test_set)
    return list(found.values())


def _resolve_one(value: str, split: str | None, config: str | None, audio: str, text: str) -> list[TestSet]:
    if value in GROUPS:
        return [TEST_SETS[name] for name in GROUPS[value]]
    if value in TEST_SETS:
        return [TEST_SETS[value]]
    directory = Path(value).expanduser()
    if directory.is_dir():
        chosen = [split] if split and split != ALL_SPLITS else _local_splits(directory, split)
        return [TestSet(f"{directory.name}:{name}", value, config, name, audio, text) for name in chosen]
    if value.count("/") == 1 and not value.startswith((".", "/", "~")):
        split_name = split or "test"
        return [TestSet(f"{value}:{split_name}", value, config, split_name, audio, text)]
    raise UnknownTestSet(
        f"unknown test set '{value}'; choose from {known_names()}, or give a local directory or a Hub id (owner/name)"
    )


def _local_splits(directory: Path, split: str | None) -> list[str]:
    """Every split for `--split all`, every condition of a robustness set by default, else the default split."""
    from tiny_audio.data.robust import robust_conditions  # not at import: `ta --help` reads this module

    conditions = robust_conditions(directory)
    if conditions:
        return conditions
    if split == ALL_SPLITS:
        return list(find_local_splits(directory)) or [_default_local_split(directory)]  # the latter says why not
    return [_default_local_split(directory)]


def _default_local_split(directory: Path) -> str:
    available = list(find_local_splits(directory))
    for name in LOCAL_SPLIT_PREFERENCE:
        if name in available:
            return name
    if len(available) == 1:
        return available[0]
    raise UnknownTestSet(
        f"{directory} has splits {', '.join(available) or 'none'}; choose one with --split"
        if available
        else f"{directory} holds no split: expected <split>/metadata.csv (audiofolder), <split>.jsonl or parquet files"
    )


def probe_hub(test_set: TestSet) -> None:
    """For a Hub set, one request, no retries: `datasets` would retry an unreachable Hub for half a minute.

    Skipped in offline mode (HF_HUB_OFFLINE=1), where `datasets` reads its cache and fails at once.
    """
    # Imported here: `ta --help` reads this module and should not pay for the Hub client.
    from huggingface_hub import HfApi
    from huggingface_hub import constants as hub_constants

    if Path(test_set.path).expanduser().is_dir() or hub_constants.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(test_set.path, timeout=HUB_PROBE_TIMEOUT_S)
    # Any failure of this one request (no network, DNS, HTTP 401/403/404, timeout) means the set
    # cannot be read; the error's type and message are passed on, not swallowed.
    except Exception as error:
        raise TestSetUnavailable(
            f"cannot reach test set '{test_set.name}' ({test_set.source}) on the Hub at {hub_constants.ENDPOINT}: "
            f"{type(error).__name__}: {error}; {hint(test_set)}"
        ) from error


def hint(test_set: TestSet) -> str:
    if Path(test_set.path).expanduser().is_dir():
        return "check the directory's splits and columns (--split, --audio-column, --text-column)"
    if test_set.gated:
        return f"accept the terms on https://huggingface.co/datasets/{test_set.path} and log in with `hf auth login`"
    from huggingface_hub import constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 reads only the local cache: run once with the network to fill it"
    return "check the network and the id, or set HF_HUB_OFFLINE=1 to read a cached copy"
