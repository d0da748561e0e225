"""Three `tramontane up` gateways sharing one real PostgreSQL database (and one
home, as a shared volume would be), as behind a load balancer: the same keys,
deployments and answers whichever gateway a request reaches; the control
plane's leader SIGKILLed under load, its successor taking over and adopting the
running replica, every request answered or refused with Retry-After."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from test_up import home, launch_up, wait_ready  # noqa: F401  (home: the fixture)

from tramontane.inference.registry import default_embedding_model_path

REPLICA_APP = Path(__file__).parents[1] / "control" / "replica_app.py"
PEPPER = "a-pepper-the-gateways-share-0123456789"


@pytest.fixture
def gateways(postgres_url: str, home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRAMONTANE_DATABASE_URL", postgres_url)
    monkeypatch.setenv("TRAMONTANE_KEY_PEPPER", PEPPER)
    # The embedding model alone: it loads in a second, and models are not the point here.
    model = f"all-minilm-l6-v2={default_embedding_model_path()}"
    # Base as the sandboxes' default template: no template build in the background.
    options = ("--model", model, "--sandbox-default-template", "base")
    started = []
    try:
        first = launch_up(*options)
        started.append(first)
        wait_ready(first[0], first[3])  # the first creates the schema and the admin key
        for _ in range(2):
            started.append(launch_up(*options))
        for proc, _, _, url in started[1:]:
            wait_ready(proc, url)
        yield started
    finally:
        for proc, lines, reader, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, lines, reader, _ in started:
            try:
                proc.wait(timeout=60)
            except subprocess_timeout():
                proc.kill()
                proc.wait()
            reader.join(timeout=10)


def subprocess_timeout() -> type[Exception]:
    import subprocess

    return subprocess.TimeoutExpired


def _admin(url: str, home: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {(home / 'admin-key').read_text().strip()}"}


def _wait(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.slow
def test_gateways_share_keys_deployments_and_fail_over(gateways, home: Path):
    urls = [g[3] for g in gateways]
    admin = _admin(urls[0], home)
    workspace = httpx.get(f"{urls[1]}/v1/admin/workspaces", headers=admin).json()["data"][0]["id"]

    # A key made on one gateway works on all; revoked on another, it fails on all at once.
    made = httpx.post(f"{urls[1]}/v1/admin/workspaces/{workspace}/keys", headers=admin,
                      json={"name": "app", "capabilities": ["inference", "deploy", "fine-tune", "sandbox"]}).json()
    key = {"Authorization": f"Bearer {made['key']}"}
    assert all(httpx.get(f"{url}/v1/models", headers=key).status_code == 200 for url in urls)
    doomed = httpx.post(f"{urls[0]}/v1/admin/workspaces/{workspace}/keys", headers=admin,
                        json={"name": "doomed", "capabilities": ["inference"]}).json()
    assert httpx.delete(f"{urls[2]}/v1/admin/keys/{doomed['id']}", headers=admin).status_code == 200
    for url in urls:
        refused = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {doomed['key']}"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "api_key_revoked"

    # Each gateway hosts sandboxes too: one made through a gateway runs on one of
    # them and is reached through the others.
    made = httpx.post(f"{urls[0]}/v1/sandboxes", headers=key, json={}, timeout=60)
    assert made.status_code == 201, made.text
    sandbox = made.json()["sandbox_id"]
    for url in urls:
        ran = httpx.post(f"{url}/v1/sandboxes/{sandbox}/commands", headers=key, timeout=60,
                         json={"cmd": "echo across", "stream": False})
        assert ran.status_code == 200 and ran.json()["stdout"] == "across\n", ran.text
    assert httpx.delete(f"{urls[2]}/v1/sandboxes/{sandbox}", headers=key, timeout=60).status_code == 204
    assert httpx.get(f"{urls[1]}/v1/sandboxes/{sandbox}", headers=key).status_code == 404

    # A batch job submitted through one gateway runs once, on one of them, and its
    # results are read through another.
    lines = "".join(json.dumps({"custom_id": str(n), "body": {"input": f"line {n}"}}) + "\n" for n in range(5))
    upload = httpx.post(f"{urls[0]}/v1/files", headers=key, data={"purpose": "batch"},
                        files={"file": ("lines.jsonl", lines.encode())}, timeout=30)
    assert upload.status_code == 200, upload.text
    job = httpx.post(f"{urls[1]}/v1/batch/jobs", headers=key, timeout=30, json={
        "input_files": [upload.json()["id"]], "endpoint": "/v1/embeddings", "model": "all-minilm-l6-v2"}).json()
    _wait(lambda: httpx.get(f"{urls[2]}/v1/batch/jobs/{job['id']}", headers=key).json()["status"] == "SUCCESS",
          60, "the batch job")
    done = httpx.get(f"{urls[0]}/v1/batch/jobs/{job['id']}", headers=key).json()
    assert (done["total_requests"], done["succeeded_requests"]) == (5, 5)
    results = httpx.get(f"{urls[2]}/v1/files/{done['output_file']}/content", headers=key, timeout=30)
    assert sorted(json.loads(line)["custom_id"] for line in results.text.splitlines()) == [str(n) for n in range(5)]

    # A deployment created through a follower is the leader's; every gateway sees and serves it.
    spec = {
        "name": "echo", "command": f"{sys.executable} {REPLICA_APP}",
        "resources": {"cpu": 0.25, "memory_mb": 64},
        "health_check": {"type": "tcp", "grace_period_s": 20, "interval_s": 0.2, "failures_before_restart": 3},
        "scaling": {"min_replicas": 1, "max_replicas": 1, "downscale_delay_s": 0},
    }
    created = httpx.post(f"{urls[2]}/v1/deployments", headers=key, json=spec, timeout=30)
    assert created.status_code == 201, created.text
    pids = set()
    for url in urls:
        assert [d["name"] for d in httpx.get(f"{url}/v1/deployments", headers=key).json()["data"]] == ["echo"]
        answer = httpx.get(f"{url}/serve/echo/anything", headers=key, timeout=30)
        assert answer.status_code == 200, answer.text
        pids.add(answer.json()["pid"])
    assert len(pids) == 1
    replica_pid = pids.pop()
    before_kill = httpx.get(f"{urls[1]}/v1/deployments/echo", headers=key).json()["replicas"]
    assert [r["state"] for r in before_kill] == ["RUNNING"]

    # The leader (the first gateway: it took the free lease) dies under load.
    leader, followers = gateways[0][0], urls[1:]
    outcomes: Counter[str] = Counter()
    served_by: set[int] = set()
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(headers=key, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.get(f"{url}/serve/echo/anything")
                except httpx.HTTPError as exc:
                    outcomes[f"transport error {type(exc).__name__}"] += 1
                    continue
                if response.status_code == 200:
                    try:
                        served_by.add(response.json()["pid"])
                        outcomes["answered"] += 1
                    except ValueError:
                        outcomes[f"200 {response.headers} {response.content[:200]!r}"] += 1
                elif response.status_code == 503 and "retry-after" in response.headers:
                    outcomes["refused with Retry-After"] += 1
                    time.sleep(0.05)
                else:
                    outcomes[f"{response.status_code} {response.text[:200]}"] += 1

    workers = [threading.Thread(target=load, args=(url,), daemon=True) for url in followers for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    before = outcomes["answered"]
    killed = time.monotonic()
    leader.send_signal(signal.SIGKILL)
    leader.wait(timeout=10)

    def answering_again() -> bool:
        return outcomes["answered"] > before + 20

    # Served again through the new leader within the lease (3 s) plus the forwarding's wait.
    took = _wait(lambda: outcomes["answered"] > before and answering_again(), 30, "service after the takeover")
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    print(f"takeover: service back {time.monotonic() - killed:.2f} s after SIGKILL ({took:.2f}); {dict(outcomes)}")
    assert set(outcomes) <= {"answered", "refused with Retry-After"}, outcomes
    # The same replica all along: adopted, not started again, never two of them.
    assert served_by == {replica_pid}
    replicas = httpx.get(f"{followers[0]}/v1/deployments/echo", headers=key).json()["replicas"]
    assert [(r["id"], r["state"], r["pid"]) for r in replicas] == [
        (before_kill[0]["id"], "RUNNING", before_kill[0]["pid"])
    ]
    assert httpx.delete(f"{followers[1]}/v1/deployments/echo", headers=key, timeout=60).status_code == 200
    _wait(lambda: not _alive(replica_pid), 30, "the replica to stop")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
