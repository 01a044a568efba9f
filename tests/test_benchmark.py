"""The step benchmark runs on the tiny fixtures and reports padding waste correctly (figures not asserted)."""

import json
from pathlib import Path

from tiny_audio.benchmark import run_benchmark


def test_benchmark_reports_both_padding_modes(tiny_fixtures, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    results = run_benchmark(
        str(tiny_fixtures["glm_asr"]), str(tiny_fixtures["qwen3"]), steps=1, warmup=0, bf16=False, out=out, log=print
    )
    by_mode = {r["encoder_padding"]: r for r in results}
    # 2-7 s clips padded to 30 s: at most 7/30 of the frames are real.
    assert by_mode["max_length"]["real_frame_share"] < 7 / 30 + 0.01
    assert by_mode["longest"]["real_frame_share"] > 0.5
    assert json.loads(out.read_text()) == results
