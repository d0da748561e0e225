"""A real `tramontane up` SIGKILLed in the middle of a rollout: started again on
the same home, it rolls the unfinished revision back and says why, adopts the
replica of the revision it was serving, and kills the new revision's replica,
so that no process is left behind."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_up import home, launch_up, wait_ready  # noqa: F401  (home: the fixture)

from tramontane.inference.registry import default_embedding_model_path

REPLICA_APP = Path(__file__).parents[1] / "control" / "replica_app.py"
# The embedding model alone: it loads in a second, and models are not the point here.
MODEL = ("--model", f"all-minilm-l6-v2={default_embedding_model_path()}")


def _until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(proc, reader) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except Exception:
        proc.kill()
        proc.wait()
    reader.join(timeout=10)


@pytest.mark.slow
def test_sigkill_mid_rollout_rolls_back_on_restart_leaving_no_orphan(home: Path) -> None:  # noqa: F811
    first = launch_up(*MODEL)
    proc, _, reader, url = first
    try:
        wait_ready(proc, url)
        admin = {"Authorization": f"Bearer {(home / 'admin-key').read_text().strip()}"}
        workspace = httpx.get(f"{url}/v1/admin/workspaces", headers=admin).json()["data"][0]["id"]
        made = httpx.post(
            f"{url}/v1/admin/workspaces/{workspace}/keys",
            headers=admin,
            json={"name": "d", "capabilities": ["deploy", "inference"]},
        ).json()
        key = {"Authorization": f"Bearer {made['key']}"}
        client = httpx.Client(base_url=url, headers=key, timeout=30)
        spec = {
            "name": "svc",
            "command": f"{sys.executable} {REPLICA_APP}",
            "env": {"APP_VERSION": "1"},
            "resources": {"cpu": 0.25, "memory_mb": 64},
            "health_check": {"type": "tcp", "grace_period_s": 20, "interval_s": 0.2, "failures_before_restart": 3},
            "scaling": {"min_replicas": 1, "max_replicas": 1},
        }
        assert client.post("/v1/deployments", json=spec).status_code == 201
        served = client.get("/serve/svc/version")
        assert served.status_code == 200 and served.json()["version"] == "1", served.text
        old_pid = served.json()["pid"]  # the app's own; the replica's pid is its launcher's
        [old_replica] = client.get("/v1/deployments/svc").json()["replicas"]

        # Revision 2 starts a replica that will not pass its check for a minute: the
        # rollout is under way when the gateway dies.
        slow = {"command": "sleep 60", "health_check": {"grace_period_s": 60}}
        assert client.patch("/v1/deployments/svc", json=slow).status_code == 200

        def new_replica_pid() -> int | None:
            replicas = client.get("/v1/deployments/svc").json()["replicas"]
            return next((r["pid"] for r in replicas if r["revision"] == 2 and r["pid"]), None)

        new_pid = _until(new_replica_pid, 20, "revision 2's replica")
        client.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _alive(old_pid) and _alive(new_pid)  # both outlive their control plane
        killed_at = time.monotonic()
    finally:
        _stop(proc, reader)

    second = launch_up(*MODEL)
    proc, _, reader, url = second
    try:
        wait_ready(proc, url)
        print(f"gateway back {time.monotonic() - killed_at:.1f} s after the SIGKILL")
        client = httpx.Client(base_url=url, headers=key, timeout=30)
        shown = _until(
            lambda: (d := client.get("/v1/deployments/svc").json())["status"] == "rolled_back" and d, 20, "rollback"
        )
        assert "restarted" in shown["status_reason"] and shown["revision"] == 1 and shown["rolling_out"] is None
        # The replica that was serving is adopted, not started again; the new one is gone.
        assert [(r["id"], r["pid"], r["revision"]) for r in shown["replicas"]] == [
            (old_replica["id"], old_replica["pid"], 1)
        ]
        assert client.get("/serve/svc/version").json() == {"pid": old_pid, "version": "1"}
        _until(lambda: not _alive(new_pid), 10, "revision 2's replica to be killed")
        revisions = client.get("/v1/deployments/svc/revisions").json()["data"]
        assert [(r["number"], r["status"]) for r in revisions] == [(1, "active"), (2, "failed")]
        kinds = [e["kind"] for e in client.get("/v1/deployments/svc/events").json()["data"]]
        assert kinds[-1] == "rolled_back", kinds
        client.close()
    finally:
        _stop(proc, reader)
    # Stopped cleanly, a single gateway stops its replicas too.
    _until(lambda: not _alive(old_pid), 10, "the adopted replica to stop with its gateway")
