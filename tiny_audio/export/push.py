"""`ta push`: export a checkpoint and upload the export with its model card to a Hub model repo.

The token comes from HF_TOKEN or `hf auth login` through huggingface_hub, never from the command
line. `upload_folder` (huggingface_hub 2 with hf_xet) uploads in resumable batches: run the same command
again to resume. (huggingface_hub 2 has no `upload_large_folder`.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from tiny_audio.export.export import export_model, is_export
from tiny_audio.hub_token import scrub_token


class PushError(RuntimeError):
    """Why the model could not be pushed, worded with the fix."""


def check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(
            f"'{repo_id}' is not a valid repo id: {error}; use OWNER/NAME, e.g. alice/tiny-audio-mlp"
        ) from None
    if repo_id.count("/") != 1:
        raise PushError(f"'{repo_id}' is not a valid repo id; use OWNER/NAME, e.g. alice/tiny-audio-mlp")


def require_token() -> None:
    if not get_token():
        raise PushError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (tokens are never passed as options)"
        )


def push_model(
    source: Path,
    repo_id: str,
    *,
    private: bool = False,
    export_dir: Path | None = None,
    api: HfApi | None = None,
    **export_options: object,
) -> str:
    """Export `source` (a checkpoint; an export is pushed as it is) and upload it; returns the repo URL."""
    check_repo_id(repo_id)
    require_token()
    if is_export(source):
        folder = source
    else:
        folder = export_dir or source.parent / f"export-{repo_id.split('/')[1]}"
        export_model(source, folder, model_id=repo_id, **export_options)  # type: ignore[arg-type]
    api = api or HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model")
    except RepositoryNotFoundError:
        raise PushError(
            f"the Hub refused repo '{repo_id}': it does not exist and could not be created; check the owner name "
            "and that your token may write to it (`hf auth whoami`)"
        ) from None
    except HfHubHTTPError as error:
        raise PushError(f"upload of {folder} to {repo_id} failed: {scrub_token(str(error))}") from None
    return str(url)


def push_export_quietly(folder: Path, repo_id: str | None, log: Callable[[str], None]) -> bool:
    """Upload an export at the end of training; a failure is logged, never raised (the run is done)."""
    if not repo_id:
        return False
    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Final model for transformers, with its model card"
        )
    except Exception as error:  # network, auth, quota: the export stays on disk
        log(
            f"warning: could not upload the export to {repo_id} ({scrub_token(f'{type(error).__name__}: {error}')}); "
            f"push it with: ta push {folder} {repo_id}"
        )
        return False
    log(f"The final model loads with transformers from the Hub: {api.endpoint}/{repo_id}")
    return True
