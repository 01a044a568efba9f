"""Thin wrapper around RunPod's API (the `runpod` package) and, inside a pod, `runpodctl`.

Run as `python -m tiny_audio.remote.runpod_api stop-this-pod` on a pod, it stops that pod: this is the
auto-stop step of `ta runpod train --auto-stop`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any


class RunPodError(RuntimeError):
    pass


def _client() -> Any:
    key = os.environ.get("RUNPOD_API_KEY")
    if not key:
        raise RunPodError(
            "RUNPOD_API_KEY is not set. Create a key at runpod.io → Settings → API Keys and "
            "`export RUNPOD_API_KEY=...`."
        )
    import runpod  # imported here: a pod can auto-stop through runpodctl without the package

    runpod.api_key = key
    return runpod


def ssh_address(pod: dict[str, Any]) -> tuple[str, int] | None:
    """The (public ip, port) that forwards to the pod's sshd, as RunPod's Connect panel shows it."""
    for port in (pod.get("runtime") or {}).get("ports") or []:
        if port.get("privatePort") == 22 and port.get("isIpPublic"):
            return port["ip"], int(port["publicPort"])
    return None


def _call(what: str, method: str, *args: Any) -> Any:
    """Call the RunPod API and turn its errors (bad key, unknown pod, network) into one message."""
    client = _client()
    import requests

    try:
        return getattr(client, method)(*args)
    except (client.error.RunPodError, requests.RequestException) as error:
        raise RunPodError(f"RunPod API: {what} failed: {error}") from error


def find_pod(host: str, port: int) -> dict[str, Any]:
    """The account's pod whose SSH is reachable at host:port."""
    pods = _call("listing pods", "get_pods")
    for pod in pods:
        if ssh_address(pod) == (host, port):
            return pod
    known = ", ".join(f"{p.get('name')} ({p.get('id')})" for p in pods) or "none"
    raise RunPodError(
        f"no pod of this RunPod account has SSH at {host}:{port} (pods: {known}). "
        "Check the address, or pass --pod-id from runpod.io/console/pods."
    )


def stop_pod(pod_id: str) -> None:
    """Stop: billing for the GPU ends, the volume (and its data) stays and is billed for storage."""
    _call(f"stopping pod {pod_id}", "stop_pod", pod_id)


def terminate_pod(pod_id: str) -> None:
    """Terminate: the pod and its data are deleted; all billing ends."""
    _call(f"terminating pod {pod_id}", "terminate_pod", pod_id)


def stop_this_pod() -> int:
    """Inside a pod: ask RunPod to stop it. Returns a process exit code."""
    pod_id = os.environ.get("RUNPOD_POD_ID")
    if not pod_id:
        print("tiny-audio: auto-stop: RUNPOD_POD_ID is not set, so this is not a RunPod pod; nothing stopped")
        return 1
    runpodctl = shutil.which("runpodctl")  # preinstalled on pods, with a key scoped to this pod
    try:
        if runpodctl is not None:
            subprocess.run([runpodctl, "stop", "pod", pod_id], check=True)
        else:
            stop_pod(pod_id)
    except (subprocess.CalledProcessError, RunPodError) as error:
        print(f"tiny-audio: auto-stop FAILED for pod {pod_id}: {error}. Stop it at runpod.io/console/pods.")
        return 1
    print(f"tiny-audio: auto-stop: asked RunPod to stop pod {pod_id}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["stop-this-pod"]:
        sys.exit("usage: python -m tiny_audio.remote.runpod_api stop-this-pod")
    sys.exit(stop_this_pod())
