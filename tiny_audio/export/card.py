"""The model card (README.md of an export), generated from the run's own records, never hand-filled.

Sources: the checkpoint's model config, trainer_state.json, and training_state.pt (counters, and
the RunRecordCallback record: stages, hardware, wall time, config, evaluations), plus an optional
evaluation results file:

  {"results": [{"dataset": "speechbrain/LoquaciousSet", "config": "clean", "split": "test",
                "wer": 0.123, "num_samples": 2000,
                "substitution_rate": 0.08, "insertion_rate": 0.01, "deletion_rate": 0.03}]}

`dataset` and `wer` (a fraction, 0.123 = 12.3 %) are required; the rest is optional. `name` is
read as `config` too, and a single result object (such as `ta eval --output` writes) is accepted.
`split_size` (clips in the split) and `subset` (true when fewer were scored) say whether the WER
is the whole split's; `ta eval`'s results.json carries them (and the clips dropped, by reason).
A subset's WER is tabled with "N of M clips" but kept out of the model-index unless asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

from tiny_audio.model.build import LORA_DIR, PROJECTOR_FILE, read_model_config
from tiny_audio.model.decoder_weights import has_decoder
from tiny_audio.training.records import read_records

DEFAULT_LICENSE = "other"
REQUIREMENTS = "transformers peft accelerate soundfile soxr"


class EvalResultsError(ValueError):
    """An evaluation results file that does not follow the documented schema."""


def read_eval_results(path: Path) -> list[dict[str, Any]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EvalResultsError(f"cannot read evaluation results {path}: {error}") from None
    if isinstance(raw, dict) and "test_sets" in raw:
        raw = _from_ta_eval(path, raw)
    entries = raw.get("results", [raw]) if isinstance(raw, dict) else raw
    results = []
    for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
        if not isinstance(entry, dict) or "dataset" not in entry or not isinstance(entry.get("wer"), int | float):
            raise EvalResultsError(
                f"{path}: result {i} needs 'dataset' (a name or hub id) and 'wer' (a fraction, e.g. 0.123); "
                f"got {sorted(entry) if isinstance(entry, dict) else type(entry).__name__}"
            )
        results.append({**entry, "config": entry.get("config", entry.get("name")), "subset": _is_subset(entry)})
    return results


def _is_subset(entry: dict[str, Any]) -> bool:
    if isinstance(entry.get("subset"), bool):
        return entry["subset"]
    scored, size = entry.get("num_samples"), entry.get("split_size")
    return isinstance(scored, int) and isinstance(size, int) and scored < size


def _from_ta_eval(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """`ta eval --out DIR`'s results.json (one model) in this module's schema."""
    models = sorted({str(r["model"]) for r in raw.get("results", [])})
    if len(models) != 1:
        raise EvalResultsError(
            f"{path} scores {len(models)} models ({', '.join(models)}); a card describes one: "
            "run `ta eval` on this model alone and pass that results.json"
        )
    sets = {t["name"]: t for t in raw["test_sets"]}
    keys = ("wer", "wer_interval", "substitution_rate", "insertion_rate", "deletion_rate", "num_samples")
    results = []
    for r in raw["results"]:
        test_set = sets[r["test_set"]]
        size = test_set.get("split_size")
        results.append(
            {
                "dataset": str(test_set["path"]),
                "title": r["test_set"],
                "config": test_set.get("config"),
                "split": test_set.get("split"),
                **{k: r[k] for k in keys if k in r},
                "split_size": size,
                "skipped": test_set.get("skipped") or {},
                # `ta eval` stops at --num-samples (100 by default): unless it read the split to its end,
                # the clips scored are its first ones, and ESB sets put their longest clips first.
                "subset": size is None or r.get("num_samples") != size,
            }
        )
    return {"results": results}


def _is_hub_id(reference: str) -> bool:
    return reference.count("/") == 1 and not Path(reference).exists() and not reference.startswith((".", "/"))


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def build_card(
    checkpoint: Path,
    *,
    model_id: str | None = None,
    eval_results: list[dict[str, Any]] | None = None,
    license: str = DEFAULT_LICENSE,
    export_dir: Path | None = None,
    index_subsets: bool = False,
) -> str:
    """The card of `checkpoint`, describing the files of `export_dir` (the export it goes into) when given."""
    cfg = read_model_config(checkpoint)
    records = read_records(checkpoint)
    stages = records["stages"]
    trainer_state = records["trainer_state"]
    eval_results = eval_results or []
    name = model_id or checkpoint.name
    indexed = [r for r in eval_results if index_subsets or not r.get("subset")]
    datasets = sorted(
        {d["path"] for s in stages for d in s["config"]["data"]["datasets"] if _is_hub_id(str(d["path"]))}
    )
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "automatic-speech-recognition",
        "license": license,
        "tags": ["tiny-audio", "speech-llm", "audio"],
        "base_model": [m for m in (cfg.audio_model_id, cfg.text_model_id) if _is_hub_id(m)],
        "datasets": datasets,
    }
    if indexed:
        metadata["model-index"] = [{"name": name, "results": [_index_entry(r) for r in indexed]}]
    metadata = {k: v for k, v in metadata.items() if v not in ([], None)}
    parts = [f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n", f"# {name}\n"]
    files = _exported_files(checkpoint, export_dir)
    llm = f"a frozen LLM (`{cfg.text_model_id}`), {files['lora']}"
    if has_decoder(checkpoint):
        llm = (
            f"an LLM initialised from `{cfg.text_model_id}` whose decoder was trained (every weight; "
            f"included in this export as `text_model/`), {files['lora']}"
        )
    parts.append(
        "A speech recognizer built as a speech LLM with tiny-audio: a frozen audio encoder "
        f"(`{cfg.audio_model_id}`) feeds a trained `{cfg.projector_type}` projector (pool stride "
        f"{cfg.projector_pool_stride}, hidden {cfg.projector_hidden_dim}) whose outputs replace "
        "`<audio>` tokens in the "
        f"prompt of {llm}. The encoder and LLM load in "
        f"{cfg.dtype} ({files['frozen']}); the projector weights are stored in {files['projector_dtype']}.\n"
    )
    parts.append(_usage(name))
    parts.append(_results_section(eval_results, index_subsets))
    parts.append(_training_section(checkpoint, stages, trainer_state, records["train_state"]))
    parts.append(_limitations(cfg))
    return "\n".join(parts)


def _exported_files(checkpoint: Path, export_dir: Path | None) -> dict[str, str]:
    """What the files say (LoRA kept, merged or absent; frozen weights included or referenced; stored dtype)."""
    if export_dir is not None:
        config = json.loads((export_dir / "config.json").read_text())
        merged = config.get("exported_from", {}).get("lora_merged", False)
        has_lora = config.get("lora") is not None
        included = [m for m in ("audio_model", "text_model") if config.get(m) == m]
        weights = export_dir / "model.safetensors"
    else:  # a card for the checkpoint itself
        merged, has_lora, included = False, (checkpoint / LORA_DIR).is_dir(), []
        weights = checkpoint / PROJECTOR_FILE
    lora = (
        "with its LoRA adapter merged into the LLM's weights"
        if merged
        else ("with a LoRA adapter on the LLM" if has_lora else "no LoRA")
    )
    frozen = {
        2: "both included in this repository",
        1: f"`{included[0] if included else ''}/` included, the other referenced by id",
        0: "referenced by id, not included",
    }[len(included)]
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in load_file(str(weights)).values()})
    return {"lora": lora, "frozen": frozen, "projector_dtype": ", ".join(dtypes)}


def _clips(result: dict[str, Any]) -> str:
    """Clips scored, of how many in the split, and the ones dropped (too long, silent, ...)."""
    scored, size = result.get("num_samples"), result.get("split_size")
    if scored is None:
        return ""
    if size is not None:
        text = f"{scored} of {size} clips"
    elif result.get("subset"):
        text = f"first {scored} clips of the split (size unknown)"
    else:
        text = f"{scored} clips"
    dropped = result.get("skipped") or {}
    if dropped:
        text += "; dropped: " + ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items()))
    return text


def _interval(bounds: Any) -> str:
    """` (low–high %)` for a WER's 95% interval given as [low, high] fractions, else nothing."""
    if not (isinstance(bounds, list | tuple) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds)):
        return ""
    return f" ({100 * bounds[0]:.2f}–{100 * bounds[1]:.2f} %)"


def _index_entry(result: dict[str, Any]) -> dict[str, Any]:
    dataset = {"name": result.get("title") or result["dataset"], "type": result["dataset"]}
    if result.get("subset"):
        # Asked for with index_subsets: the entry must not pass for the whole split's WER.
        dataset["name"] += f" (subset: {_clips(result)})"
        dataset["args"] = {"clips_scored": result.get("num_samples"), "split_size": result.get("split_size")}
    dataset.update({k: result[k] for k in ("config", "split") if result.get(k)})
    return {
        "task": {"type": "automatic-speech-recognition", "name": "Automatic Speech Recognition"},
        "dataset": dataset,
        "metrics": [{"type": "wer", "value": round(100 * float(result["wer"]), 2), "name": "WER"}],
    }


def _usage(name: str) -> str:
    return f"""## Usage

```bash
pip install {REQUIREMENTS}
```

```python
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model="{name}", trust_remote_code=True)
print(asr("clip.wav")["text"])                                    # a file (WAV, FLAC, OGG, MP3)
print(asr({{"raw": samples, "sampling_rate": 44100}})["text"])      # an array at any rate, mono or stereo
print(asr(["a.wav", "b.wav"], batch_size=8))                      # a batch
print(asr("long.wav", chunk_length_s=30)["text"])                 # more than 30 s, in 30 s pieces
```
"""


def _results_section(results: list[dict[str, Any]], index_subsets: bool) -> str:
    lines = ["## Evaluation\n"]
    if not results:
        lines.append("No test-set evaluation was supplied to the export (`ta export --eval-results FILE`).\n")
        return "\n".join(lines)
    lines += ["| dataset | config | split | samples | WER | sub | ins | del |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rates = [
            f"{100 * r[k]:.2f} %" if isinstance(r.get(k), int | float) else ""
            for k in ("wer", "substitution_rate", "insertion_rate", "deletion_rate")
        ]
        rates[0] += _interval(r.get("wer_interval"))
        lines.append(
            f"| {r['dataset']} | {r.get('config') or ''} | {r.get('split') or ''} | {_clips(r)} | "
            + " | ".join(rates)
            + " |"
        )
    intervals = any(_interval(r.get("wer_interval")) for r in results)
    lines.append(
        "\nWER on normalised text, greedy decoding"
        + ("; in brackets its 95% interval (bootstrap over clips).\n" if intervals else ".\n")
    )
    subsets = [r for r in results if r.get("subset")]
    if subsets:
        where = (
            "marked as subsets in the model-index"
            if index_subsets
            else "left out of the model-index (`--index-subsets` lists them there, marked)"
        )
        lines.append(
            f"{len(subsets)} of these scored only part of their split (`ta eval` scores the first "
            "`--num-samples` clips, and some test sets put their longest clips first): their WER is not the "
            f"test set's, and they are {where}.\n"
        )
    return "\n".join(lines)


def _training_section(
    checkpoint: Path, stages: list[dict[str, Any]], trainer_state: dict[str, Any], train_state: dict[str, Any]
) -> str:
    lines = ["## Training\n"]
    if not stages:
        step = trainer_state.get("step")
        lines.append(
            f"This export was made from `{checkpoint.name}`"
            + (f" at step {step}" if step is not None else "")
            + ", which holds no run record (stages, hardware, time): it was not written by `ta train`.\n"
        )
        return "\n".join(lines)
    lines += [
        "| stage | experiment | trained | steps | hardware | wall time | samples | audio | last train loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(stages, 1):
        trained = ", ".join(k for k, v in s["trainable"].items() if v)
        loss = s.get("train_loss")
        lines.append(
            f"| {i} | {s['experiment']} | {trained} | {s['start_step']}→{s['end_step']} of {s['max_steps']} | "
            f"{s.get('hardware', '?')} | {_hours(s['wall_seconds'])} | {s.get('samples_seen', '?')} | "
            f"{s.get('audio_hours', 0):.2f} h | {'' if loss is None else f'{loss:.4f}'} |"
        )
    total = sum(s["wall_seconds"] for s in stages)
    lines.append(f"\nTotal wall time {_hours(total)}; exported from `{checkpoint.name}`.\n")
    evaluations = [(i, e) for i, s in enumerate(stages, 1) for e in s.get("evaluations", [])]
    if evaluations:
        keys = sorted({k for _, e in evaluations for k in e if k != "step"})
        lines += [
            "### Evaluations during training\n",
            "| stage | step | " + " | ".join(keys) + " |",
            "|---|---|" + "---|" * len(keys),
        ]
        for i, e in evaluations:
            cells = [f"{e[k]:.4f}" if k in e else "" for k in keys]
            lines.append(f"| {i} | {e['step']} | " + " | ".join(cells) + " |")
        lines.append("")
    training = stages[-1]["config"]["training"]
    data = stages[-1]["config"]["data"]
    lines.append(
        f"Last stage: learning rate {training['learning_rate']} ({training['lr_scheduler_type']}, "
        f"{training['warmup_steps']} warm-up steps), batch {training['per_device_train_batch_size']} x "
        f"{training['gradient_accumulation_steps']} accumulation, bf16 {training['bf16']}, seed {training['seed']}; "
        f"clips {data['min_duration']}–{data['max_duration']} s at {data['sample_rate']} Hz from "
        + ", ".join(f"`{d['path']}`" for d in data["datasets"])
        + ".\n"
    )
    for i, s in enumerate(stages, 1):
        config = yaml.safe_dump(s["config"], sort_keys=False)
        lines.append(f"<details><summary>Stage {i} configuration</summary>\n\n```yaml\n{config}```\n</details>\n")
    return "\n".join(lines)


def _limitations(cfg: Any) -> str:
    local = [m for m in (cfg.audio_model_id, cfg.text_model_id) if not _is_hub_id(m)]
    lines = [
        "## Limitations\n",
        "- At most 30 s of audio per clip (the encoder's window). Longer audio is refused unless "
        "`chunk_length_s` is given, which cuts it into consecutive pieces without overlap: words at a cut may be lost.",
        "- Greedy decoding of a single transcript; no timestamps, no language identification.",
        "- Quality is whatever the evaluation above says, on those test sets only; other accents, domains "
        "and noise conditions are untested.",
        "- The code is loaded with `trust_remote_code=True`: read the `.py` files in this repository first.",
    ]
    if local:
        lines.append(
            f"- The frozen model(s) {', '.join(f'`{m}`' for m in local)} were local paths when this model was "
            "trained; unless this export includes them (`audio_model/`, `text_model/`), it loads only where they exist."
        )
    return "\n".join(lines) + "\n"


def write_model_card(
    directory: Path,
    checkpoint: Path,
    *,
    model_id: str | None = None,
    eval_results: Path | None = None,
    license: str = DEFAULT_LICENSE,
    index_subsets: bool = False,
) -> Path:
    results = read_eval_results(eval_results) if eval_results is not None else None
    card = build_card(
        checkpoint,
        model_id=model_id,
        eval_results=results,
        license=license,
        export_dir=directory,
        index_subsets=index_subsets,
    )
    path = directory / "README.md"
    path.write_text(card)
    return path
