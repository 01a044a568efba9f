"""`ta serve` in a real browser: Debian's headless Chromium uploads a clip and reads the transcript,
which must equal `ta transcribe`'s; and `ta space` writes a Space that runs the same app.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

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
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#audio input[type=file]"))
        upload.send_keys(str(clip))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#audio audio, #audio .waveform-container, #audio wave"))
        browser.find_element(By.CSS_SELECTOR, "#transcribe").click()
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
