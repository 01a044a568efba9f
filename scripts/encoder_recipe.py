"""Pretrain the stand-in encoder with another recipe and print its character error rates.

    python scripts/encoder_recipe.py ~/.cache/tiny-audio/miniature-v3-<key> batch_size=8 steps=2400

The miniature folder is one `ta course` built (its speech and robustness sets are reused; the
cached encoder is not touched). Overrides are `EncoderRecipe` fields (tiny_audio/miniature/encoder.py).
The recipe is trained in this one process on one thread, so the figures do not depend on the core
count; the course's own build splits each batch between `processes` and may differ in the last digits.
Prints and writes `encoder-recipe.json` in the current folder: CER on both held-out splits and on
the robustness conditions given with `--conditions`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from tiny_audio.miniature.encoder import EncoderRecipe, FeatureBatches, character_error_rate
from tiny_audio.miniature.standins import pretrain_on_speech, read_split

CONDITIONS = "clean,new_accent,fast,noise_pink_10db,noise_pink_5db,babble_10db,reverb_medium,telephone"


def parse_recipe(overrides: list[str]) -> EncoderRecipe:
    types = {f.name: f.type for f in fields(EncoderRecipe)}
    values: dict[str, int | float] = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in types or not value:
            raise SystemExit(f"'{item}': give NAME=VALUE with NAME one of {', '.join(types)}")
        values[name] = float(value) if types[name] in (float, "float") else int(value)
    return replace(EncoderRecipe(), **values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("miniature", type=Path, help="a miniature folder (speech/, robust/) from `ta course`")
    parser.add_argument("overrides", nargs="*", help="EncoderRecipe fields, e.g. batch_size=8 steps=2400")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", default=CONDITIONS, help="robustness conditions to score, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("encoder-recipe.json"))
    args = parser.parse_args()
    recipe = parse_recipe(args.overrides)
    torch.set_num_threads(1)
    started = time.perf_counter()
    encoder, head = pretrain_on_speech(args.miniature / "speech", recipe, args.seed)
    report: dict[str, object] = {"recipe": args.overrides, "seconds": round(time.perf_counter() - started)}
    splits = [args.miniature / "speech" / s for s in ("validation", "validation_new_voice")]
    splits += [args.miniature / "robust" / c for c in args.conditions.split(",") if c]
    for split in splits:
        batches = FeatureBatches(*read_split(split), recipe.batch_size)
        report[split.name] = round(100 * character_error_rate(encoder, head, batches), 1)
    print(json.dumps(report))
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
