"""The benchmark's printed table: one column per run, one row per figure."""

from __future__ import annotations

from typing import Any

from tiny_audio.benchmark.measure import PHASES


def _g(value: float) -> str:
    """FLOP-sized numbers in engineering units."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def _with_eval(run: dict[str, Any], kind: str) -> str:
    value = None if run["evaluation"] is None else run["evaluation"]["peak_memory_gib"][kind]
    return "-" if value is None else f"{value:.2f}"


ROWS: list[tuple[str, Any]] = [
    ("samples/s", lambda r: f"{r['samples_per_second']:.3f}"),
    ("audio s/s", lambda r: f"{r['audio_seconds_per_second']:.2f}"),
    ("target tokens/s", lambda r: f"{r['target_tokens_per_second']:.1f}"),
    ("step s (median)", lambda r: f"{r['step_seconds']['median']:.2f}"),
    ("step s (p90)", lambda r: f"{r['step_seconds']['p90']:.2f}"),
    ("step s at ceiling", lambda r: f"{r['step_seconds']['at_ceiling']:.2f}"),
    ("launch->1st step s", lambda r: f"{r['launch_to_first_step_seconds']:.1f}"),
    ("build->1st step s", lambda r: f"{r['build_to_first_step_seconds']:.1f}"),
    ("peak RSS GiB", lambda r: f"{r['peak_memory_gib']['rss']:.2f}"),
    ("peak RSS GiB, with eval", lambda r: _with_eval(r, "rss")),
    (
        "peak GPU GiB",
        lambda r: (
            "-"
            if r["peak_memory_gib"]["gpu_max_allocated"] is None
            else f"{r['peak_memory_gib']['gpu_max_allocated']:.2f}"
        ),
    ),
    ("peak GPU GiB, with eval", lambda r: _with_eval(r, "gpu_max_allocated")),
    ("eval s", lambda r: "-" if r["evaluation"] is None else f"{r['evaluation']['seconds']:.1f}"),
    ("loader samples/s", lambda r: f"{r['data_loader']['samples_per_second']:.1f}"),
    ("loader / step", lambda r: f"{r['data_loader']['ratio_to_step']:.1f}x"),
    ("audio padding", lambda r: f"{r['padding']['audio_frames']:.0%}"),
    ("text padding", lambda r: f"{r['padding']['text_tokens']:.0%}"),
    *[(f"  {name} s", (lambda n: lambda r: f"{r['time_breakdown_seconds_per_step'][n]:.3f}")(name)) for name in PHASES],
    *[
        (
            f"  FLOP {part} (run/useful)",
            (lambda p: lambda r: f"{_g(r['flops_per_step']['as_run'][p])}/{_g(r['flops_per_step']['useful'][p])}")(
                part
            ),
        )
        for part in ("encoder_forward", "projector", "llm", "lm_head", "total")
    ],
    (
        "FLOP counted (/formula)",
        lambda r: f"{_g(r['flops_per_step']['counted']['total'])} ({r['flops_counted_over_formula']:.2f})",
    ),
    (
        "FLOP/s as run",
        lambda r: f"{_g(r['flops_per_second']['as_run'])} ({r['fraction_of_matmul_ceiling']['as_run']:.0%})",
    ),
    (
        "FLOP/s useful",
        lambda r: f"{_g(r['flops_per_second']['useful'])} ({r['fraction_of_matmul_ceiling']['useful']:.0%})",
    ),
    ("course stage 1 h", lambda r: f"{r['projected_course_stage1_hours']:.1f}"),
]


def format_table(report: dict[str, Any]) -> str:
    runs = report["runs"]
    machine, ceiling = report["machine"], report["matmul_ceiling_flops_per_second"]
    header = [""] + [f"{r['config']['encoder_padding']} (batch {r['batch_size']})" for r in runs]
    rows = [header] + [[name] + [cell(r) for r in runs] for name, cell in ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    load = machine.get("load_average")
    lines.append(
        f"{machine['name']} ({machine['device']}, {machine['torch_threads']} threads"
        + (f", load {load[0]:.1f}" if load else "")
        + f"): matmul ceiling bf16 {_g(ceiling['bfloat16'])}FLOP/s, fp32 {_g(ceiling['float32'])}FLOP/s; "
        "percentages are of the ceiling in the run's precision. Course stage 1 = 50,000 steps x 16 samples. "
        "Eval: one evaluation as training runs it (loss, then transcripts), after the timed steps."
    )
    return "\n".join(lines)
