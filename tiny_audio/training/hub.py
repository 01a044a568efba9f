"""Push checkpoints to a Hugging Face Hub model repo in the background, never stopping training.

Each saved checkpoint is uploaded to the repo root, so the repo always holds the newest complete
checkpoint: `load_pretrained(repo_id)` loads it, and downloading it gives a resumable checkpoint.
The token comes from HF_TOKEN or `hf auth login` through huggingface_hub itself; this module never
reads it except to scrub it from error text.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi

from tiny_audio.hub_token import scrub_token
from tiny_audio.model.build import LORA_DIR
from tiny_audio.training.trainer import Callback, Trainer

STAGING_DIR = ".hub-staging"  # a leading dot: checkpoint discovery and pruning ignore it


class HubPushCallback(Callback):
    """Upload every saved checkpoint to `repo_id` on a background thread.

    A failed upload is retried `retries` times with exponential backoff; the first one that still
    fails is reported once as a warning and training goes on with its local checkpoints. When uploads
    fall behind, a newer checkpoint replaces the one still waiting, so the queue never grows.
    """

    def __init__(
        self,
        repo_id: str,
        retries: int = 3,
        *,
        backoff_seconds: float = 5.0,
        wait_seconds: float = 600.0,
        api: HfApi | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.wait_seconds = wait_seconds
        self.api = api or HfApi()
        self.failures = 0
        self.pushed: Path | None = None  # local checkpoint whose contents the repo holds now
        self.last_saved: Path | None = None
        self._log: Callable[[str], None] = print
        self._lock = threading.Lock()
        self._pending: tuple[Path, Path] | None = None  # (staged copy, original checkpoint)
        self._worker: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.api.endpoint}/{self.repo_id}"

    def on_train_start(self, trainer: Trainer) -> None:
        self._log = trainer.log

    def on_save(self, trainer: Trainer, checkpoint: Path) -> None:
        self._log = trainer.log
        self.last_saved = checkpoint
        try:
            staged = _stage(checkpoint, checkpoint.parent / STAGING_DIR / checkpoint.name)
        except OSError as error:
            # A full disk (or no hard links and no room to copy) costs this upload, not the run:
            # the checkpoint itself is complete, and the next save reports the full disk if it still is.
            self.failures += 1
            self._log(
                f"warning: could not stage {checkpoint.name} for the Hub upload ({error.strerror}); it stays "
                f"in {checkpoint.parent}; push it later with: hf upload {self.repo_id} {checkpoint} ."
            )
            return
        with self._lock:
            if self._pending is not None:
                shutil.rmtree(self._pending[0], ignore_errors=True)
            self._pending = (staged, checkpoint)
            if self._worker is None:
                self._worker = threading.Thread(target=self._drain, name="hub-push", daemon=True)
                self._worker.start()

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        """The final model is the last checkpoint saved; wait (bounded) until it is on the Hub."""
        worker = self._worker
        if worker is not None and worker.is_alive():
            trainer.log(f"Waiting for the upload of {self.last_saved} to {self.repo_id} to finish...")
            worker.join(self.wait_seconds)
        if self.last_saved is None:
            return
        if worker is not None and worker.is_alive():
            trainer.log(
                f"Hub upload still running after {self.wait_seconds:.0f} s; not waiting longer. The final model is "
                f"at {self.last_saved}; push it with: hf upload {self.repo_id} {self.last_saved} ."
            )
        elif self.pushed == self.last_saved:
            trainer.log(f"Final model ({self.last_saved.name}) is on the Hub: {self.url}")
        else:
            trainer.log(
                f"The final model ({self.last_saved.name}) is not on the Hub ({self.failures} upload(s) failed); "
                f"it is safe at {self.last_saved}; push it with: hf upload {self.repo_id} {self.last_saved} ."
            )

    # --- background ---------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._worker = None
                    return
            staged, checkpoint = job
            try:
                self._upload_with_retries(staged, checkpoint)
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def _upload_with_retries(self, staged: Path, checkpoint: Path) -> None:
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            try:
                self.api.create_repo(self.repo_id, exist_ok=True)
                self.api.upload_folder(
                    repo_id=self.repo_id,
                    folder_path=str(staged),
                    commit_message=f"Upload {checkpoint.name}",
                    # A LoRA adapter left by an earlier stage would be loaded with this stage's projector.
                    delete_patterns=[f"{LORA_DIR}/*"],
                )
            except Exception as caught:  # any failure (network, auth, quota) must leave training running
                error = caught
                continue
            if self.failures:
                self._log(f"Hub upload recovered: {checkpoint.name} is on {self.url}")
            self.pushed = checkpoint
            return
        self.failures += 1
        if self.failures == 1:
            reason = scrub_token(f"{type(error).__name__}: {error}")
            self._log(
                f"warning: could not upload {checkpoint.name} to the Hub repo {self.repo_id} after "
                f"{self.retries + 1} attempts ({reason}). Training continues and checkpoints stay in "
                f"{checkpoint.parent}; later checkpoints are still tried, without further warnings. Check "
                "`hf auth whoami` and that the token may write to the repo, or push by hand with "
                f"`hf upload {self.repo_id} <checkpoint dir>`."
            )


def _stage(checkpoint: Path, staged: Path) -> Path:
    """Hard-link (else copy) `checkpoint` to `staged`: pruning may delete the original mid-upload."""
    shutil.rmtree(staged, ignore_errors=True)
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(checkpoint, staged, copy_function=os.link)
    except OSError:
        shutil.rmtree(staged, ignore_errors=True)
        try:
            shutil.copytree(checkpoint, staged)
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)  # a half copy must never be uploaded
            raise
    return staged
