"""`ta serve` in a real browser: Debian's headless Chromium uploads a clip and reads the transcript,
which must equal `ta transcribe`'s; and `ta space` writes a Space that runs the same app.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.data_helpers import tone
from tests.export_helpers import MAX_NEW_TOKENS, save_tiny_model, ta_transcribe, write_clips
from tiny_audio.serve.cli import APP_FILE, launch, write_space

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)
def test_browser_upload_shows_the_ta_transcribe_transcript(tiny_model_config, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    checkpoint = save_tiny_model(tiny_model_config, tmp_path / "checkpoint-1")
    clip = write_clips(tmp_path / "clips")[0]
    expected = ta_transcribe(checkpoint, [clip])[0]
    port = free_port()
    demo = launch(
        str(checkpoint), "127.0.0.1", port, block=False, max_new_tokens=MAX_NEW_TOKENS
    )  # a checkpoint: served through its export
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)

    def upload_and_transcribe(path: Path) -> None:
        browser.get(f"http://127.0.0.1:{port}/")  # a fresh page: its audio input is empty
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#audio input[type=file]"))
        upload.send_keys(str(path))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#audio audio, #audio .waveform-container, #audio wave"))
        browser.find_element(By.CSS_SELECTOR, "#transcribe").click()

    try:
        wait = WebDriverWait(browser, 120)
        notes = tmp_path / "notes.wav"
        notes.write_text("meeting notes, not a recording\n")  # a text file named .wav: the page says so
        upload_and_transcribe(notes)
        toasts = "[data-testid=toast-body]"
        wait.until(lambda b: any("cannot decode notes.wav" in t.text for t in b.find_elements(By.CSS_SELECTOR, toasts)))
        upload_and_transcribe(clip)  # and the next upload still works
        box = browser.find_element(By.CSS_SELECTOR, "#transcript textarea")
        wait.until(lambda _: box.get_attribute("value") == expected)
        screenshot = tmp_path / "serve.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")
        assert screenshot.stat().st_size > 10_000
        assert box.get_attribute("value") == expected
    finally:
        browser.save_screenshot(str(tmp_path / "serve-last.png"))
        print(f"last screenshot: {tmp_path / 'serve-last.png'}")
        browser.quit()
        demo.close()


def test_space_is_the_same_app_pointed_at_the_repo(tmp_path: Path) -> None:
    write_space("alice/tiny", tmp_path / "space")
    app = (tmp_path / "space" / "app.py").read_text()
    assert app == APP_FILE.read_text().replace('"TINY_AUDIO_MODEL", "")', '"TINY_AUDIO_MODEL", "alice/tiny")')
    requirements = (tmp_path / "space" / "requirements.txt").read_text().split()
    assert {"gradio>=5", "peft", "soundfile", "soxr"} <= set(requirements)
    assert "sdk: gradio" in (tmp_path / "space" / "README.md").read_text()


def test_serve_refuses_a_directory_that_is_no_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tiny_audio.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 1 and "is neither an export" in result.output


# --- the demo under bad uploads and a full queue, through the real server and gradio's own client ---


@pytest.fixture(scope="module")
def export_dir(tiny_model_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_audio.export.export import export_model

    root = tmp_path_factory.mktemp("serve-export")
    return export_model(save_tiny_model(tiny_model_config, root / "checkpoint-1"), root / "export").directory


@pytest.fixture(scope="module")
def server(export_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`ta serve` with its defaults, a client, a good clip and its transcript through the demo."""
    from gradio_client import Client

    port = free_port()
    demo = launch(str(export_dir), "127.0.0.1", port, block=False, max_new_tokens=MAX_NEW_TOKENS)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    good = write_clips(tmp_path_factory.mktemp("good"))[0]
    yield client, good, predict(client, good)
    client.close()
    demo.close()


def predict(client, path: Path) -> str:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/transcribe")


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("meeting notes, not a recording\n")


def _two_hours(path: Path) -> None:
    # 2 h at 4 kHz, 8-bit: 29 MB, under the upload limit, so the model's own check is what refuses it.
    sf.write(path, np.zeros(2 * 3600 * 4000, dtype=np.float32), 4000, subtype="PCM_U8")


def _nan(path: Path) -> None:
    samples = tone(1.0, 16000)
    samples[4000:4100] = np.nan
    sf.write(path, samples, 16000, subtype="FLOAT")


BAD_UPLOADS = [
    ("empty.wav", _zero_bytes, r"cannot transcribe empty\.wav: it holds no audio \(0 samples\); record or upload"),
    ("notes.wav", _text, r"cannot decode notes\.wav: .*readable formats: WAV, FLAC, OGG, MP3"),
    ("long.wav", _two_hours, r"cannot transcribe long\.wav: it is 7200\.0 s long; this model reads at most 30 s"),
    ("nan.wav", _nan, r"cannot transcribe nan\.wav: it holds NaN or infinite samples; re-export it"),
]


@pytest.mark.parametrize(("name", "write", "message"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_a_bad_upload_gets_a_clear_message_and_the_next_still_works(server, tmp_path: Path, name, write, message):
    from gradio_client.exceptions import AppError

    client, good, good_text = server
    write(tmp_path / name)
    with pytest.raises(AppError) as refused:
        predict(client, tmp_path / name)
    assert re.search(message, str(refused.value)), str(refused.value)
    assert "/tmp" not in str(refused.value)  # names the upload, not the server's copy of it
    assert predict(client, good) == good_text != ""


def test_digital_silence_gives_an_empty_transcript(server, tmp_path: Path) -> None:
    client, good, good_text = server
    sf.write(tmp_path / "silence.wav", np.zeros(32000, dtype=np.int16), 16000, subtype="PCM_16")
    assert predict(client, tmp_path / "silence.wav") == ""
    assert predict(client, good) == good_text


def test_8khz_stereo_is_mixed_and_resampled_as_ta_transcribe_does(server, export_dir: Path, tmp_path: Path) -> None:
    client, _, _ = server
    clip = tmp_path / "phone.wav"
    sf.write(clip, np.stack([tone(1.5, 8000, freq=300.0), tone(1.5, 8000, freq=450.0)], axis=1), 8000)
    assert predict(client, clip) == ta_transcribe(export_dir.parent / "checkpoint-1", [clip])[0]


def test_an_upload_over_the_size_limit_is_refused_before_it_is_stored(export_dir: Path, tmp_path: Path) -> None:
    import httpx

    port = free_port()
    demo = launch(str(export_dir), "127.0.0.1", port, block=False, max_new_tokens=MAX_NEW_TOKENS, max_upload_mb=1)
    try:
        big = tmp_path / "big.wav"
        sf.write(big, tone(40.0, 16000), 16000)  # 1.3 MB
        with big.open("rb") as handle:
            response = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload", files={"files": handle})
        assert response.status_code >= 400 and "exceeded maximum allowed size" in response.text
    finally:
        demo.close()


def test_past_the_queue_size_a_request_is_refused_at_once(export_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    from tiny_audio.serve.app import build_demo, load

    asr = load(str(export_dir))
    started, release = threading.Event(), threading.Event()
    real_stream = asr.model.stream

    def held_stream(*args, **kwargs):  # holds the one running transcription until the queue is full
        started.set()
        release.wait(60)
        yield from real_stream(*args, **kwargs)

    monkeypatch.setattr(asr.model, "stream", held_stream)
    demo = build_demo(asr, max_new_tokens=MAX_NEW_TOKENS, queue_size=1, concurrency=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    clip = write_clips(tmp_path / "clips")[0]
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    try:
        running = client.submit(handle_file(str(clip)), api_name="/transcribe")
        assert started.wait(60)
        waiting = client.submit(handle_file(str(clip)), api_name="/transcribe")
        deadline = time.monotonic() + 60
        while len(demo._queue) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(QueueError, match="Queue is full! Please try again"):
            # a bound, not a timing: a request that waited instead would time out here
            client.submit(handle_file(str(clip)), api_name="/transcribe").result(timeout=30)
        assert not release.is_set() and running.status().code.name == "PROCESSING"  # refused while both wait
        release.set()
        assert running.result(timeout=60) == waiting.result(timeout=60) != ""
    finally:
        release.set()
        client.close()
        demo.close()


def test_serve_defaults_match_the_apps_own(tmp_path: Path) -> None:
    from tiny_audio.serve import app, cli

    assert cli.DEFAULT_QUEUE_SIZE == app.QUEUE_SIZE and cli.DEFAULT_CONCURRENCY == app.CONCURRENCY
    assert f"{cli.DEFAULT_MAX_UPLOAD_MB}mb" == app.MAX_UPLOAD


def test_serve_bench_reports_percentiles_failures_and_memory_growth(tmp_path: Path) -> None:
    import json

    from tiny_audio.serve.bench import BenchResult, write_report

    result = BenchResult(model="m", clients=2, uploads_per_client=10, requests=21, wall_s=4.0)
    result.latencies_s = [float(x) for x in range(1, 21)]
    result.single_client_latencies_s = [0.5, 0.7, 0.6]
    result.failed = ["bad.wav: AppError: boom"]
    result.rss_mb = {"after 20": 400.0, "after 200": 430.0}
    summary = write_report(result, tmp_path / "bench.json")
    assert (summary["latency_p50_s"], summary["latency_p95_s"], summary["latency_max_s"]) == (10.5, 19.05, 20.0)
    assert summary["single_client_p50_s"] == 0.6
    assert summary["failed"] == 1 and summary["throughput_per_s"] == 5.0 and summary["rss_growth_pct"] == 7.5
    assert json.loads((tmp_path / "bench.json").read_text())["latencies_s"] == result.latencies_s


def test_serve_bench_refuses_too_few_requests_before_starting_a_server(tmp_path: Path) -> None:
    from tiny_audio.serve.bench import run_bench

    with pytest.raises(ValueError, match=r"total=100 must be at least warmup \+ clients × uploads = 180"):
        run_bench("unused", tmp_path, clients=16, uploads=10, warmup=20, total=100)
    assert not (tmp_path / "clips").exists()


def test_a_bf16_export_is_served_in_float32_on_a_cpu_that_would_emulate_it(
    tiny_model_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from tiny_audio import hardware
    from tiny_audio.export.export import export_model
    from tiny_audio.serve.app import load

    checkpoint = save_tiny_model(lambda: tiny_model_config(dtype="bfloat16"), tmp_path / "checkpoint-1")
    exported = export_model(checkpoint, tmp_path / "export").directory
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    asr = load(str(exported))
    assert {p.dtype for p in asr.model.parameters()} == {torch.float32}
    assert "Serving: float32 instead of model.dtype=bfloat16" in capsys.readouterr().err
