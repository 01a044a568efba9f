"""The model card from a real short run's records, the automatic export at the end of training, and `ta push`.

The Hub cannot be reached here: `ta push` runs against a stand-in for HfApi's two calls (create_repo,
upload_folder), and the missing-token case replaces huggingface_hub's token lookup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from huggingface_hub.errors import RepositoryNotFoundError
from typer.testing import CliRunner

from tests.data_helpers import write_audiofolder
from tests.training_helpers import short_run_config
from tiny_audio.cli import app
from tiny_audio.evaluation.dataset import load_test_set
from tiny_audio.evaluation.registry import TestSet
from tiny_audio.export import push
from tiny_audio.export.card import EvalResultsError, build_card, read_eval_results
from tiny_audio.recipe.run import run


@pytest.fixture(scope="module")
def short_run(tiny_model_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three steps with an evaluation at step 2; returns the run's output directory."""
    root = tmp_path_factory.mktemp("card_run")
    data = write_audiofolder(root / "data", {"train": 8, "validation": 4})
    cfg = short_run_config(
        "card",
        tiny_model_config(),
        data,
        root / "run",
        data_options={"max_eval_samples": 4},
        max_steps=3,
        eval_steps=2,
        logging_steps=1,
        eval_wer_samples=0,
        preflight=False,
    )
    run(cfg, log=lambda _: None)
    return root / "run"


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_training_ends_with_an_export_and_a_card_from_the_run_records(short_run: Path) -> None:
    export = short_run / "export"
    assert json.loads((export / "config.json").read_text())["model_type"] == "tiny_audio"
    card = (export / "README.md").read_text()
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "automatic-speech-recognition" and meta["library_name"] == "transformers"
    assert "model-index" not in meta, "no test-set results were given"
    # The stage row: experiment, what trained, steps, hardware and time all come from the checkpoint.
    row = next(line for line in card.splitlines() if line.startswith("| 1 | card |"))
    assert "| projector | 0→3 of 3 |" in row and "CPU (" in row and " s |" in row
    eval_row = next(line for line in card.splitlines() if line.startswith("| 1 | 2 |"))
    assert len(eval_row.split("|")) > 3, "the evaluation at step 2 is tabled with its loss"
    assert "eval/loss" in card and "max_steps: 3" in card
    # Named by the model (the export folder's own name), never by a local path.
    assert "\n# export\n" in card
    assert str(short_run) not in card.split("## Training")[0]
    assert 'pipeline("automatic-speech-recognition", model="export", trust_remote_code=True)' in card
    # What the card says of the weights is what the export holds: float32 projector, frozen models by id.
    assert "The encoder and LLM load in float32 (referenced by id, not included)" in card
    assert "the projector weights are stored in float32" in card and "no LoRA" in card


def test_card_holds_eval_results_in_model_index_and_table(short_run: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            {
                "results": [
                    {
                        "dataset": "speechbrain/LoquaciousSet",
                        "config": "clean",
                        "split": "test",
                        "wer": 0.123,
                        "num_samples": 2000,
                        "substitution_rate": 0.08,
                    },
                    {"dataset": "openslr/librispeech_asr", "name": "other", "split": "test", "wer": 0.25},
                ]
            }
        )
    )
    card = build_card(short_run / "checkpoint-3", model_id="alice/tiny", eval_results=read_eval_results(results))
    (index,) = front_matter(card)["model-index"]
    assert index["name"] == "alice/tiny"
    first, second = index["results"]
    assert first["metrics"] == [{"type": "wer", "value": 12.3, "name": "WER"}]
    assert first["dataset"] == {
        "name": "speechbrain/LoquaciousSet",
        "type": "speechbrain/LoquaciousSet",
        "config": "clean",
        "split": "test",
    }
    assert second["dataset"]["config"] == "other"
    assert "| speechbrain/LoquaciousSet | clean | test | 2000 clips | 12.30 % | 8.00 % |  |  |" in card


def test_card_reads_the_results_json_of_ta_eval(short_run: Path, tmp_path: Path) -> None:
    loquacious = {
        "name": "loquacious-dev",
        "path": "speechbrain/LoquaciousSet",
        "config": "medium",
        "split": "dev",
        "split_size": 100,  # read to its end: the WER is the whole split's
    }
    row = {"model": "outputs/mlp/checkpoint-3", "test_set": "loquacious-dev", "wer": 0.2, "num_samples": 100}
    document = {"schema_version": 1, "test_sets": [loquacious], "results": [row]}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(document))
    (entry,) = front_matter(build_card(short_run / "checkpoint-3", eval_results=read_eval_results(results)))[
        "model-index"
    ][0]["results"]
    assert entry["dataset"] == {
        "name": "loquacious-dev",
        "type": "speechbrain/LoquaciousSet",
        "config": "medium",
        "split": "dev",
    }
    assert entry["metrics"][0]["value"] == 20.0
    card = build_card(short_run / "checkpoint-3", eval_results=read_eval_results(results))
    assert "| 20.00 % |" in card and "interval" not in card  # none given, none claimed
    document["results"].append({**row, "model": "other/model"})
    results.write_text(json.dumps(document))
    with pytest.raises(EvalResultsError, match="scores 2 models"):
        read_eval_results(results)


def _ta_eval_results(tmp_path: Path, split_size: int | None, scored: int, skipped: dict[str, int]) -> Path:
    test_set = {
        "name": "ami",
        "path": "esb/datasets",
        "config": "ami",
        "split": "test",
        "skipped": skipped,
        "split_size": split_size,
    }
    row = {
        "model": "outputs/mlp/checkpoint-3",
        "test_set": "ami",
        "wer": 0.3,
        "wer_interval": [0.25, 0.3512],
        "num_samples": scored,
    }
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"schema_version": 1, "test_sets": [test_set], "results": [row]}))
    return results


def test_a_subset_wer_is_tabled_as_one_and_kept_out_of_the_model_index(short_run: Path, tmp_path: Path) -> None:
    # `ta eval` stopped at its default 100 clips: the split's size is unknown, two clips were too long.
    results = read_eval_results(_ta_eval_results(tmp_path, None, 100, {"too_long": 2}))
    card = build_card(short_run / "checkpoint-3", model_id="alice/tiny", eval_results=results)
    assert "model-index" not in front_matter(card)
    assert "| first 100 clips of the split (size unknown); dropped: too_long 2 | 30.00 % (25.00–35.12 %) |" in card
    assert "in brackets its 95% interval (bootstrap over clips)" in card
    assert "1 of these scored only part of their split" in card and "left out of the model-index" in card

    (entry,) = front_matter(
        build_card(short_run / "checkpoint-3", model_id="alice/tiny", eval_results=results, index_subsets=True)
    )["model-index"][0]["results"]
    assert entry["dataset"]["name"].startswith("ami (subset: first 100 clips")
    assert entry["dataset"]["args"] == {"clips_scored": 100, "split_size": None}


def test_clips_dropped_from_a_split_read_to_its_end_make_it_a_subset(short_run: Path, tmp_path: Path) -> None:
    dropped = read_eval_results(_ta_eval_results(tmp_path, 103, 100, {"too_long": 3}))
    card = build_card(short_run / "checkpoint-3", eval_results=dropped)
    assert "| 100 of 103 clips; dropped: too_long 3 |" in card and "model-index" not in front_matter(card)
    whole = read_eval_results(_ta_eval_results(tmp_path, 100, 100, {}))
    card = build_card(short_run / "checkpoint-3", model_id="alice/tiny", eval_results=whole)
    (entry,) = front_matter(card)["model-index"][0]["results"]
    assert entry["dataset"]["name"] == "ami" and "args" not in entry["dataset"]
    assert "| 100 of 100 clips |" in card and "scored only part" not in card


def test_ta_eval_knows_the_split_size_only_when_it_read_the_split_to_its_end(tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"test": 5})
    test_set = TestSet("local", str(data), None, "test")
    assert load_test_set(test_set, 16000, limit=3).split_size is None
    assert load_test_set(test_set, 16000, limit=5).split_size == 5  # the limit falls on the split's end
    assert load_test_set(test_set, 16000, limit=None).split_size == 5


def test_eval_results_schema_errors_are_clear(tmp_path: Path) -> None:
    single = tmp_path / "single.json"  # one result at the top level
    single.write_text(json.dumps({"dataset": "d/x", "name": None, "split": "dev", "wer": 0.5, "samples": []}))
    assert read_eval_results(single)[0]["wer"] == 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": [{"dataset": "d/x", "WER": "12%"}]}))
    with pytest.raises(EvalResultsError, match=r"result 0 needs 'dataset' .* and 'wer' \(a fraction"):
        read_eval_results(bad)


class FakeHfApi:
    """Stands in for the Hub's servers, which cannot be reached from here; records what was asked."""

    endpoint = "https://huggingface.co"

    def __init__(self, missing: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.missing = missing

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.missing:
            response = httpx.Response(404, request=httpx.Request("POST", f"{self.endpoint}/api/repos/create"))
            raise RepositoryNotFoundError("404 Client Error", response=response)
        return f"{self.endpoint}/{repo_id}"

    def upload_folder(self, **kwargs: Any) -> None:
        folder = Path(kwargs["folder_path"])
        self.calls.append(("upload_folder", {**kwargs, "files": sorted(p.name for p in folder.iterdir())}))


def test_push_exports_and_uploads_with_the_repo_in_the_card(short_run: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    api = FakeHfApi()
    url = push.push_model(short_run / "checkpoint-3", "alice/tiny", private=True, export_dir=tmp_path / "e", api=api)
    assert url == "https://huggingface.co/alice/tiny"
    (_, create), (_, upload) = api.calls
    assert create["private"] is True and create["exist_ok"] is True
    assert upload["repo_id"] == "alice/tiny" and upload["folder_path"] == str(tmp_path / "e")
    assert {"config.json", "README.md", "model.safetensors", "modeling_tiny_audio.py"} <= set(upload["files"])
    assert 'model="alice/tiny"' in (tmp_path / "e" / "README.md").read_text()


def test_push_errors_name_the_fix(short_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = str(short_run / "checkpoint-3")
    result = CliRunner().invoke(app, ["push", checkpoint, "not a repo!"])
    assert result.exit_code == 1 and "is not a valid repo id" in result.output and "OWNER/NAME" in result.output
    monkeypatch.setattr(push, "get_token", lambda: None)  # no HF_TOKEN and no `hf auth login`
    result = CliRunner().invoke(app, ["push", checkpoint, "alice/tiny"])
    assert result.exit_code == 1 and "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in result.output
    monkeypatch.setattr(push, "get_token", lambda: "hf_" + "x" * 30)
    with pytest.raises(push.PushError, match="the Hub refused repo 'bob/tiny'"):
        push.push_model(short_run / "export", "bob/tiny", api=FakeHfApi(missing=True))
