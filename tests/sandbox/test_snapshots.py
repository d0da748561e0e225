"""Pause writes a tier-1 sandbox to disk and resume brings it back: its files,
its running commands (started again), its settings; across a server restart
too. A damaged snapshot is refused, snapshots count against the workspace's
storage limit, and they go with the sandbox (and with the workspace's folder)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tramontane.sandbox import ManagerConfig, Sandbox, SandboxManager, SandboxState
from tramontane.sandbox.client import SandboxException
from tramontane.sandbox.snapshots import ARCHIVE, MANIFEST

if TYPE_CHECKING:
    from conftest import LiveSandboxes

WORKSPACE = "ws_00112233445566aa"  # the shape tenancy gives workspace ids


def _config(state: Path, **overrides) -> ManagerConfig:
    return ManagerConfig(
        max_sandboxes=8, pool_size=0, microvm_pool_size=0, reap_interval_s=0.1, state_dir=str(state), **overrides
    )


def _snapshot_dir(live: LiveSandboxes, sandbox_id: str) -> Path:
    return live.manager._snapshots[sandbox_id].directory


def _fill(sbx: Sandbox) -> None:
    sbx.files.write("notes/today.txt", "remember me")
    sbx.commands.run(
        "echo scratch > /tmp/scratch && ln -s /usr/lib lib-link && mkdir -p site && echo page > site/index.html"
    )
    sbx.commands.run("python3 -m http.server 8321", cwd="/home/user/site", background=True).disconnect()


def _check_restored(sbx: Sandbox) -> None:
    assert sbx.files.read("notes/today.txt") == "remember me"
    assert sbx.commands.run("cat /tmp/scratch && readlink lib-link").stdout == "scratch\n/usr/lib\n"
    served = sbx.commands.run(
        "for i in $(seq 50); do python3 -c \"import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:8321/index.html').read().decode())\" 2>/dev/null && break; sleep 0.1; done"
    )
    assert served.stdout == "page\n\n"
    assert any(p.cmd == "python3 -m http.server 8321" and p.cwd == "/home/user/site" for p in _processes(sbx))


def _processes(sbx: Sandbox) -> list:
    return [type("P", (), p) for p in sbx._call("GET", "processes")["processes"]]


def test_pause_writes_the_sandbox_to_disk_and_resume_brings_it_back(live: LiveSandboxes) -> None:
    with live.create(timeout=120, envs={"COLOUR": "teal"}) as sbx:
        _fill(sbx)
        sbx.run_code("kept = 'in memory'")
        sbx.pause()
        assert sbx.get_info().state is SandboxState.PAUSED
        assert live.manager.get(sbx.sandbox_id).runtime is None  # nothing of it runs
        directory = _snapshot_dir(live, sbx.sandbox_id)
        assert (directory / ARCHIVE).stat().st_size > 0 and (directory / MANIFEST).exists()
        with pytest.raises(SandboxException) as caught:
            sbx.commands.run("true")
        assert caught.value.status == 409
        sbx.resume()
        assert sbx.get_info().state is SandboxState.RUNNING
        _check_restored(sbx)
        assert sbx.commands.run("echo $COLOUR").stdout == "teal\n"
        # Memory is not part of a tier-1 snapshot: the interpreter starts afresh.
        assert sbx.run_code("kept").error.name == "NameError"
        assert not directory.exists()  # a resumed snapshot is consumed


def test_paused_sandboxes_survive_a_server_restart(tmp_path: Path, serve_sandboxes) -> None:
    with serve_sandboxes(SandboxManager(_config(tmp_path))) as first:
        sbx = first.create(timeout=120)
        _fill(sbx)
        sbx.pause()
        sandbox_id = sbx.sandbox_id
    with serve_sandboxes(SandboxManager(_config(tmp_path))) as second:
        again = Sandbox.connect(sandbox_id, api_url=second.url)
        assert again.get_info().state is SandboxState.PAUSED
        again.resume()
        _check_restored(again)
        again.kill()


def test_a_damaged_snapshot_is_refused_and_kept(live: LiveSandboxes) -> None:
    with live.create(timeout=120) as sbx:
        sbx.files.write("data.txt", "x" * 10000)
        sbx.pause()
        archive = _snapshot_dir(live, sbx.sandbox_id) / ARCHIVE
        raw = bytearray(archive.read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        archive.write_bytes(bytes(raw))
        with httpx.Client(base_url=live.url, timeout=60) as http:
            refused = http.post(f"/v1/sandboxes/{sbx.sandbox_id}/resume")
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "snapshot_corrupted"
            assert sbx.get_info().state is SandboxState.PAUSED
            # A manifest edited to point elsewhere fails its own checksum.
            manifest = archive.with_name(MANIFEST)
            document = json.loads(manifest.read_text())
            document["body"]["spec"]["owner"] = "ws_ffffffffffffffff"
            manifest.write_text(json.dumps(document))
            refused = http.post(f"/v1/sandboxes/{sbx.sandbox_id}/resume")
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "snapshot_corrupted"
        directory = archive.parent
    assert not directory.exists()  # deleting the sandbox deletes its snapshot


def test_snapshots_count_against_the_workspace_storage_limit(tmp_path: Path, serve_sandboxes) -> None:
    config = _config(tmp_path, snapshot_bytes_per_workspace=3 * 1024 * 1024)
    headers = {"x-tenant": WORKSPACE}
    with serve_sandboxes(SandboxManager(config)) as served, httpx.Client(base_url=served.url, headers=headers) as http:
        small = http.post("/v1/sandboxes", json={"timeout": 120}).json()["sandbox_id"]
        big = http.post("/v1/sandboxes", json={"timeout": 120}).json()["sandbox_id"]
        http.post(f"/v1/sandboxes/{small}/commands", json={"cmd": "head -c 2000000 /dev/urandom > a", "stream": False})
        http.post(f"/v1/sandboxes/{big}/commands", json={"cmd": "head -c 2000000 /dev/urandom > b", "stream": False})
        assert http.post(f"/v1/sandboxes/{small}/pause").status_code == 200
        snapshot = served.manager._snapshots[small].directory
        assert snapshot.is_relative_to(tmp_path / "workspaces" / WORKSPACE)  # erased with the workspace's folder
        refused = http.post(f"/v1/sandboxes/{big}/pause")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "snapshot_storage_limit"
        # The refused sandbox runs on untouched, and no partial snapshot is left.
        ran = http.post(f"/v1/sandboxes/{big}/commands", json={"cmd": "wc -c < b", "stream": False}).json()
        assert ran["stdout"] == "2000000\n"
        assert sorted(p.name for p in snapshot.parent.iterdir()) == [small]
        assert http.delete(f"/v1/sandboxes/{small}").status_code == 204
        assert http.post(f"/v1/sandboxes/{big}/pause").status_code == 200  # room again


def test_another_workspace_cannot_resume_or_see_a_snapshot(live: LiveSandboxes) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as http:
        mine = {"x-tenant": WORKSPACE}
        sandbox_id = http.post("/v1/sandboxes", json={"timeout": 60}, headers=mine).json()["sandbox_id"]
        assert http.post(f"/v1/sandboxes/{sandbox_id}/pause", headers=mine).status_code == 200
        theirs = {"x-tenant": "ws_99999999999999ff"}
        assert http.post(f"/v1/sandboxes/{sandbox_id}/resume", headers=theirs).status_code == 404
        assert http.get(f"/v1/sandboxes/{sandbox_id}", headers=theirs).status_code == 404
        assert http.delete(f"/v1/sandboxes/{sandbox_id}", headers=mine).status_code == 204


def test_pause_and_resume_of_a_sandbox_holding_200_mb(live: LiveSandboxes) -> None:
    """The figure the docs report: tier 1 drops the memory (it restarts the
    process), so both stay well under a second or two whatever the process held."""
    with live.create(timeout=120, memory_mb=512) as sbx:
        holder = "python3 -c 'b = bytearray(200 << 20); b[::4096] = b\"x\" * len(b[::4096]); import time; time.sleep(600)'"
        sbx.commands.run(holder, background=True).disconnect()
        deadline = time.monotonic() + 20
        while sbx.get_metrics()["memory_bytes"] < 200 << 20:
            assert time.monotonic() < deadline, sbx.get_metrics()
            time.sleep(0.1)
        started = time.monotonic()
        sbx.pause()
        paused = time.monotonic() - started
        started = time.monotonic()
        sbx.resume()
        resumed = time.monotonic() - started
        assert paused < 10 and resumed < 10, (paused, resumed)
