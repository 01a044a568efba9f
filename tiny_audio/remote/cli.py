"""`ta runpod ...`: deploy the project to a GPU pod over SSH, train in tmux, watch it, fetch checkpoints,
and stop the pod so it stops billing."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tiny_audio.remote import commands, parsing, runpod_api
from tiny_audio.remote.commands import DEFAULT_SESSION, Pod, Target
from tiny_audio.remote.ssh import Remote, RemoteError

app = typer.Typer(no_args_is_help=True)

HostArg = Annotated[str, typer.Argument(help="Pod IP from RunPod → Connect → 'SSH over exposed TCP'.")]
PortArg = Annotated[int, typer.Argument(help="The pod's public SSH port (same place).")]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", envvar="TA_SSH_KEY", help="SSH private key. Default: ~/.ssh/id_ed25519 if present."),
]
UserOpt = Annotated[str, typer.Option("--user", envvar="TA_SSH_USER", help="SSH user on the pod.")]
KnownHostsOpt = Annotated[
    Path | None,
    typer.Option(envvar="TA_SSH_KNOWN_HOSTS", help="known_hosts file to use instead of ssh's own."),
]
WorkspaceOpt = Annotated[
    str, typer.Option(envvar="TA_RUNPOD_WORKSPACE", help="Pod directory holding tiny-audio/ (persistent volume).")
]
PythonOpt = Annotated[str, typer.Option("--python", envvar="TA_RUNPOD_PYTHON", help="Python on the pod.")]
TmuxSocketOpt = Annotated[
    str | None,
    typer.Option(envvar="TA_RUNPOD_TMUX_SOCKET", help="Private tmux server on the pod (tmux -L NAME)."),
]
SessionOpt = Annotated[
    str | None,
    typer.Option("--session-name", help="tmux session. Default: the only one running, else 'train'."),
]
RunDirOpt = Annotated[
    str | None,
    typer.Option(help="Run output dir (training.output_dir), relative to the project. Default: all of outputs/."),
]

F = TypeVar("F", bound=Callable[..., Any])


def _reports_errors(command: F) -> F:
    """Show expected failures as one `error:` message and exit 1, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (RemoteError, runpod_api.RunPodError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _target(host: str, port: int, key: Path | None, user: str, known_hosts: Path | None) -> Target:
    if key is not None and not key.expanduser().is_file():
        raise RemoteError(f"SSH key {key} does not exist. Pass --key (or TA_SSH_KEY) with your private key.")
    if key is None:
        default = Path.home() / ".ssh" / "id_ed25519"
        # Without the course's key, leave the choice to ssh (agent, ~/.ssh/config, id_rsa, ...).
        key = default if default.is_file() else None
    return Target(host, port, user, key.expanduser() if key else None, known_hosts)


def _remote(host: str, port: int, key: Path | None, user: str, known_hosts: Path | None) -> Remote:
    return Remote(_target(host, port, key, user, known_hosts))


def _project_root() -> Path:
    """The checkout this package runs from: what `deploy` copies."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise RemoteError(f"{root} is not a tiny-audio checkout; pass --source with the project directory.")
    return root


def _resolve_session(remote: Remote, pod: Pod, requested: str | None) -> str:
    found = parsing.key_values(remote.script(commands.sessions_script(pod), what="listing tmux sessions"))
    live, logged = found.get("session", []), found.get("log", [])
    session = parsing.pick_session(requested, live, logged, DEFAULT_SESSION)
    if session is None:
        where = remote.target.describe()
        if live:
            raise RemoteError(f"{where} runs several tmux sessions ({', '.join(live)}); pick one with --session-name.")
        raise RemoteError(
            f"no training session on {where}. Start one with `ta runpod train {remote.target.host} "
            f"{remote.target.port} --experiment NAME`."
        )
    return session


def _attach(remote: Remote, pod: Pod, session: str) -> None:
    if remote.interactive(f"{pod.tmux} attach -t ={session}") != 0:
        # Usually the session already ended (training failed at start-up): show why.
        raw = remote.script(commands.log_tail_script(pod, session), what="reading the log")
        typer.echo(f"session {session!r} is not running; the end of its log:", err=True)
        for line in parsing.terminal_lines(raw)[-20:]:
            typer.echo(line, err=True)
        raise typer.Exit(1)


@app.command()
@_reports_errors
def deploy(
    host: HostArg,
    port: PortArg,
    skip_setup: Annotated[bool, typer.Option(help="Skip installing system packages (tmux, rsync, ...).")] = False,
    skip_sync: Annotated[bool, typer.Option(help="Skip copying the project.")] = False,
    skip_deps: Annotated[bool, typer.Option(help="Skip `pip install -e .` on the pod.")] = False,
    source: Annotated[Path | None, typer.Option(help="Project directory to copy. Default: this checkout.")] = None,
    key: KeyOpt = None,
    user: UserOpt = "root",
    known_hosts: KnownHostsOpt = None,
    workspace: WorkspaceOpt = "/workspace",
    python: PythonOpt = "python",
) -> None:
    """Copy the project to the pod and install what training needs. Safe and quick to re-run."""
    remote = _remote(host, port, key, user, known_hosts)
    pod = Pod(workspace, python)
    if not skip_setup:
        typer.echo(f"[setup] system packages on {remote.target.describe()}")
        remote.stream_script(commands.setup_script(), what="setup (apt-get install)")
    if not skip_sync:
        src = source or _project_root()
        typer.echo(f"[sync] {src} -> {pod.project}")
        remote.run(f"mkdir -p {pod.project}", what="creating the project directory")
        typer.echo(f"[sync] {parsing.rsync_summary(remote.push(src, pod.project))}")
    if not skip_deps:
        typer.echo(f"[deps] pip install -e . with {python} on the pod")
        remote.stream_script(commands.deps_script(pod), what="installing the project (pip)")
    typer.echo(f"deployed to {remote.target.describe()}:{pod.project}")


@app.command()
@_reports_errors
def train(
    host: HostArg,
    port: PortArg,
    experiment: Annotated[str, typer.Option(help="Experiment under configs/experiments/ (+experiments=NAME).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Hydra overrides, e.g. training.max_steps=1000.")
    ] = None,
    session_name: Annotated[str, typer.Option(help="tmux session to run in.")] = DEFAULT_SESSION,
    force: Annotated[bool, typer.Option(help="Stop a running session of the same name first.")] = False,
    attach: Annotated[bool, typer.Option(help="Attach to the session once started.")] = True,
    auto_stop: Annotated[bool, typer.Option(help="Stop the pod when training exits (success or failure).")] = False,
    auto_stop_grace: Annotated[int, typer.Option(help="Seconds to wait before auto-stop, to cancel it.")] = 60,
    key: KeyOpt = None,
    user: UserOpt = "root",
    known_hosts: KnownHostsOpt = None,
    workspace: WorkspaceOpt = "/workspace",
    python: PythonOpt = "python",
    tmux_socket: TmuxSocketOpt = None,
) -> None:
    """Start training in a tmux session that survives disconnects; forwards HF_TOKEN and WANDB_API_KEY."""
    remote = _remote(host, port, key, user, known_hosts)
    pod = Pod(workspace, python, tmux_socket)
    facts = parsing.key_values(
        remote.script(commands.precheck_script(pod, session_name, experiment), what="checking the pod")
    )
    redeploy = f"ta runpod deploy {host} {port}"
    if facts.get("project") != ["present"]:
        raise RemoteError(f"no project at {pod.project} on {remote.target.describe()}. Run `{redeploy}` first.")
    if facts.get("experiment") != ["present"]:
        raise RemoteError(
            f"experiment {experiment!r} is not on the pod (configs/experiments/{experiment}.yaml). "
            f"Create it locally, then `{redeploy} --skip-setup`."
        )
    if facts.get("session") == ["alive"]:
        if not force:
            raise RemoteError(
                f"tmux session {session_name!r} is already running on {remote.target.describe()}. "
                f"Watch it with `ta runpod attach {host} {port}`, or pass --force to stop it and start again."
            )
        typer.echo(f"stopping session {session_name!r} (Ctrl+C, so training saves a checkpoint)")
        remote.script(commands.stop_session_script(pod, session_name), what="stopping the old session")

    secrets = {name: os.environ[name] for name in commands.SECRET_NAMES if os.environ.get(name)}
    if secrets:
        remote.run(
            commands.write_secrets_command(pod, session_name),
            what="writing secrets",
            stdin=commands.secrets_file(secrets),
        )
    script = commands.run_script(
        pod, session_name, experiment, overrides or [], auto_stop=auto_stop, auto_stop_grace_s=auto_stop_grace
    )
    remote.script(commands.launch_script(pod, session_name, script), what="starting the tmux session")

    typer.echo(f"training {experiment!r} in tmux session {session_name!r} on {remote.target.describe()}")
    typer.echo(f"forwarded: {', '.join(secrets) or 'nothing'} (HF_TOKEN, WANDB_API_KEY are read locally)")
    if "WANDB_API_KEY" not in secrets:
        typer.echo(
            "no WANDB_API_KEY here: a run that logs to W&B asks for it in the session "
            "(press 2, paste the key from wandb.ai/authorize)."
        )
    if auto_stop:
        typer.echo(f"auto-stop: the pod stops {auto_stop_grace} s after training exits.")
    typer.echo(commands.BILLING_REMINDER)
    if attach and sys.stdin.isatty():
        typer.echo("attaching (detach: Ctrl+B then D) ...")
        _attach(remote, pod, session_name)
    else:
        typer.echo(f"watch it: ta runpod attach {host} {port} (or --logs)")


@app.command("attach")
@_reports_errors
def attach_(
    host: HostArg,
    port: PortArg,
    session_name: SessionOpt = None,
    list_sessions: Annotated[bool, typer.Option("--list", help="List tmux sessions and exit.")] = False,
    logs: Annotated[bool, typer.Option("--logs", help="Print recent log lines instead of attaching.")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many log lines --logs prints.")] = 40,
    key: KeyOpt = None,
    user: UserOpt = "root",
    known_hosts: KnownHostsOpt = None,
    workspace: WorkspaceOpt = "/workspace",
    tmux_socket: TmuxSocketOpt = None,
) -> None:
    """Attach to the training session (detach: Ctrl+B then D), list sessions, or print its log."""
    remote = _remote(host, port, key, user, known_hosts)
    pod = Pod(workspace, tmux_socket=tmux_socket)
    if list_sessions:
        found = parsing.key_values(remote.script(commands.sessions_script(pod), what="listing tmux sessions"))
        for name in found.get("session", []):
            typer.echo(name)
        return
    session = _resolve_session(remote, pod, session_name)
    if logs:
        raw = remote.script(commands.log_tail_script(pod, session), what="reading the log")
        for line in parsing.terminal_lines(raw)[-lines:]:
            typer.echo(line)
        return
    if not sys.stdin.isatty():
        raise RemoteError("attach needs a terminal; use --logs to print the log instead.")
    _attach(remote, pod, session)


@app.command()
@_reports_errors
def status(
    host: HostArg,
    port: PortArg,
    session_name: SessionOpt = None,
    key: KeyOpt = None,
    user: UserOpt = "root",
    known_hosts: KnownHostsOpt = None,
    workspace: WorkspaceOpt = "/workspace",
    tmux_socket: TmuxSocketOpt = None,
) -> None:
    """One screen: session alive?, last progress (step, loss, ETA), latest checkpoint, GPU, disk."""
    remote = _remote(host, port, key, user, known_hosts)
    pod = Pod(workspace, tmux_socket=tmux_socket)
    session = _resolve_session(remote, pod, session_name)
    found = parsing.sections(remote.script(commands.status_script(pod, session), what="reading status"))
    alive = found.get("session", "").strip() == "alive"
    typer.echo(f"pod:        {remote.target.describe()}")
    typer.echo(f"session:    {session} ({'running' if alive else 'not running'})")
    latest = parsing.latest_progress(found.get("log", ""))
    if latest is None:
        typer.echo("progress:   no Step line yet")
    else:
        progress, line = latest
        loss = "?" if progress.loss is None else f"{progress.loss:.4f}"
        typer.echo(f"progress:   step {progress.step}/{progress.max_steps}  loss {loss}  ETA {progress.eta or '?'}")
        typer.echo(f"            {line}")
    checkpoint = parsing.latest_checkpoint(found.get("checkpoints", "").splitlines())
    typer.echo(f"checkpoint: {checkpoint or 'none yet'}")
    gpus = parsing.parse_gpus(found.get("gpu", ""))
    for gpu in gpus:
        typer.echo(
            f"gpu:        {gpu.name}  {gpu.utilization_pct}% busy  "
            f"{gpu.memory_used_mib / 1024:.1f}/{gpu.memory_total_mib / 1024:.1f} GiB"
        )
    if not gpus:
        typer.echo("gpu:        no nvidia-smi on this machine")
    free = parsing.parse_disk_free_gib(found.get("disk", ""))
    typer.echo(f"disk free:  {'?' if free is None else f'{free:.1f} GiB'} in {pod.workspace}")


def _latest_checkpoint(remote: Remote, pod: Pod, run_dir: str | None) -> str:
    listing = remote.script(commands.checkpoints_script(pod, run_dir), what="listing checkpoints")
    latest = parsing.latest_checkpoint(listing.splitlines())
    if latest is None:
        where = run_dir or f"{pod.project}/outputs/*"
        raise RemoteError(f"no complete checkpoint (a checkpoint-N/ with trainer_state.json) in {where} yet.")
    return latest


@app.command()
@_reports_errors
def checkpoint(
    host: HostArg,
    port: PortArg,
    run_dir: RunDirOpt = None,
    key: KeyOpt = None,
    user: UserOpt = "root",
    known_hosts: KnownHostsOpt = None,
    workspace: WorkspaceOpt = "/workspace",
) -> None:
    """Print the pod path of the newest complete checkpoint."""
    typer.echo(_latest_checkpoint(_remote(host, port, key, user, known_hosts), Pod(workspace), run_dir))


@app.command()
@_reports_errors
def download(
    host: HostArg,
    port: PortArg,
    paths: Annotated[
        list[str], typer.Argument(metavar="[CHECKPOINT] DEST", help="Pod checkpoint (default: latest), local dir.")
    ],
    run_dir: RunDirOpt = None,
    key: KeyOpt = None,
    user: UserOpt = "root",
    known_hosts: KnownHostsOpt = None,
    workspace: WorkspaceOpt = "/workspace",
) -> None:
    """Copy a checkpoint home with rsync; re-run to resume an interrupted download."""
    if len(paths) not in (1, 2):
        raise typer.BadParameter("give DEST, or CHECKPOINT DEST", param_hint="[CHECKPOINT] DEST")
    remote = _remote(host, port, key, user, known_hosts)
    pod = Pod(workspace)
    if len(paths) == 2:
        source = paths[0] if paths[0].startswith("/") else f"{pod.project}/{paths[0]}"
    else:
        source = _latest_checkpoint(remote, pod, run_dir)
    dest = Path(paths[-1])
    dest.mkdir(parents=True, exist_ok=True)
    typer.echo(f"{remote.target.describe()}:{source} -> {dest}/")
    remote.pull(source, dest)
    typer.echo(str(dest / Path(source.rstrip("/")).name))


def _pod_id(host: str | None, port: int | None, pod_id: str | None) -> str:
    if pod_id:
        return pod_id
    if host is None or port is None:
        raise typer.BadParameter("give HOST PORT, or --pod-id", param_hint="HOST PORT")
    pod = runpod_api.find_pod(host, port)
    typer.echo(f"pod {pod.get('name')} ({pod['id']}) has SSH at {host}:{port}")
    return str(pod["id"])


OptHostArg = Annotated[str | None, typer.Argument(help="Pod IP (looked up in your RunPod account).")]
OptPortArg = Annotated[int | None, typer.Argument(help="Pod SSH port.")]
PodIdOpt = Annotated[str | None, typer.Option(help="Pod id (runpod.io/console/pods) instead of HOST PORT.")]


@app.command()
@_reports_errors
def stop(host: OptHostArg = None, port: OptPortArg = None, pod_id: PodIdOpt = None) -> None:
    """Stop the pod through RunPod's API (RUNPOD_API_KEY): GPU billing ends, the volume is kept."""
    target = _pod_id(host, port, pod_id)
    runpod_api.stop_pod(target)
    typer.echo(f"stopped pod {target}; its volume is kept (and billed for storage) until you terminate it")


@app.command()
@_reports_errors
def terminate(
    host: OptHostArg = None,
    port: OptPortArg = None,
    pod_id: PodIdOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Terminate the pod through RunPod's API: all billing ends and its data is deleted."""
    target = _pod_id(host, port, pod_id)
    if not yes:
        typer.confirm(f"Terminate pod {target}? Its disk and volume are deleted.", abort=True)
    runpod_api.terminate_pod(target)
    typer.echo(f"terminated pod {target}")
