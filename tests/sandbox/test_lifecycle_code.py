"""Sandbox lifecycle (create, list, timeouts, pause, kill), API errors, and the
stateful code interpreter."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tramontane.sandbox import Sandbox, SandboxState
from tramontane.sandbox.client import InvalidArgumentException, NotFoundException, SandboxException

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _wait_gone(sandbox: Sandbox, within: float) -> float:
    started = time.monotonic()
    while sandbox.is_running():
        assert time.monotonic() - started < within, "the sandbox was not reclaimed"
        time.sleep(0.05)
    return time.monotonic() - started


def test_create_get_list_kill(live) -> None:
    sandbox = live.create(metadata={"suite": "lifecycle", "n": "1"}, cpu=0.5, memory_mb=256, disk_mb=64)
    try:
        info = sandbox.get_info()
        assert info.state is SandboxState.RUNNING
        assert (info.cpu, info.memory_mb, info.disk_mb) == (0.5, 256, 64)
        assert 100 < info.end_at - time.time() <= 300
        listed = Sandbox.list(metadata={"suite": "lifecycle"}, api_url=live.url)
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        assert Sandbox.list(metadata={"suite": "other"}, api_url=live.url) == []
        assert Sandbox.connect(sandbox.sandbox_id, api_url=live.url).commands.run("echo ok").stdout == "ok\n"
        assert sandbox.commands.run("df -m --output=size /home/user | tail -1").stdout.strip() == "64"
    finally:
        assert sandbox.kill()
    assert not sandbox.kill()
    with pytest.raises(NotFoundException):
        sandbox.get_info()


def test_error_shapes(live, sbx: Sandbox) -> None:
    with live.http() as http:
        missing = http.get("/v1/sandboxes/nope")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": {
                "message": "sandbox 'nope' does not exist or was stopped",
                "type": "not_found_error",
                "param": None,
                "code": "sandbox_not_found",
            }
        }
        invalid = http.post("/v1/sandboxes", json={"timeout": "soon"})
        assert invalid.status_code == 422 and invalid.json()["error"]["param"] == "timeout"
        unknown_field = http.post("/v1/sandboxes", json={"tmeout": 5})
        assert unknown_field.status_code == 422
        too_much = http.post("/v1/sandboxes", json={"memory_mb": 10**9})
        assert too_much.status_code == 400 and too_much.json()["error"]["param"] == "memory_mb"
        template = http.post("/v1/sandboxes", json={"template": "gpu-xl"})
        assert template.json()["error"]["code"] == "template_not_found"
        egress = http.post("/v1/sandboxes", json={"network": {"allow_out": ["pypi.org"]}})
        assert egress.status_code == 422 and egress.json()["error"]["param"] == "network.allow_out"
        bad_timeout = http.post(f"/v1/sandboxes/{sbx.sandbox_id}/timeout", json={"timeout": 0})
        assert bad_timeout.status_code == 400


def test_absolute_timeout_reclaims(live) -> None:
    sandbox = live.create(timeout=1)
    sandbox.commands.run("sleep 600", background=True)
    assert _wait_gone(sandbox, within=5) < 5
    with pytest.raises(NotFoundException):
        sandbox.commands.run("true")


def test_set_timeout_extends_and_shortens(live) -> None:
    sandbox = live.create(timeout=1)
    sandbox.set_timeout(30)
    time.sleep(1.5)
    assert sandbox.is_running()
    sandbox.set_timeout(1)
    _wait_gone(sandbox, within=5)


def test_idle_timeout_spares_busy_sandboxes(live) -> None:
    idle = live.create(idle_timeout=1)
    busy = live.create(idle_timeout=1)
    try:
        # A command that outlasts the idle timeout keeps its sandbox alive.
        busy.commands.run("sleep 2")
        assert busy.is_running()
        _wait_gone(idle, within=5)
    finally:
        busy.kill()


def test_pause_and_resume(live, sbx: Sandbox) -> None:
    sbx.commands.run("sleep 60", background=True)
    sbx.pause()
    assert sbx.get_info().state is SandboxState.PAUSED
    with pytest.raises(SandboxException) as caught:
        sbx.commands.run("true")
    assert caught.value.status == 409
    sbx.resume()
    assert sbx.commands.run("echo back").stdout == "back\n"


def test_metrics(sbx: Sandbox) -> None:
    metrics = sbx.get_metrics()
    assert 0 < metrics["memory_bytes"] < metrics["memory_limit_bytes"]
    assert metrics["pids"] >= 2 and metrics["oom_kills"] == 0


def test_run_code_keeps_state(sbx: Sandbox) -> None:
    first = sbx.run_code("x = 20\nprint('set', x)")
    assert "".join(first.logs.stdout) == "set 20\n" and first.text is None and first.error is None
    second = sbx.run_code("x * 2 + 2")
    assert second.text == "42"
    assert second.execution_count == 2


def test_run_code_traceback(sbx: Sandbox) -> None:
    sbx.run_code("def boom():\n    return 1 / 0")
    execution = sbx.run_code("print('before')\nboom()")
    assert "".join(execution.logs.stdout) == "before\n"
    assert execution.error is not None and execution.error.name == "ZeroDivisionError"
    assert "boom()" in execution.error.traceback and "return 1 / 0" in execution.error.traceback
    assert "interpreter.py" not in execution.error.traceback
    assert sbx.run_code("1 + 1").text == "2"  # state survives an error


def test_run_code_streams_and_sees_files(sbx: Sandbox) -> None:
    sbx.files.write("numbers.txt", "1\n2\n3\n")
    seen: list[str] = []
    execution = sbx.run_code(
        "import subprocess\nprint(sum(int(l) for l in open('numbers.txt')))\nsubprocess.run(['echo', 'from child'])",
        on_stdout=seen.append,
    )
    assert "".join(seen) == "6\nfrom child\n"
    assert execution.error is None


def test_run_code_timeout_interrupts_but_keeps_state(sbx: Sandbox) -> None:
    sbx.run_code("kept = 'yes'")
    execution = sbx.run_code("import time\nwhile True: time.sleep(0.1)", timeout=0.5)
    assert execution.error is not None and execution.error.name == "KeyboardInterrupt"
    assert sbx.run_code("kept").text == "'yes'"


def test_run_code_matplotlib_png(sbx: Sandbox) -> None:
    if subprocess.run(["/usr/bin/python3", "-c", "import matplotlib"], capture_output=True).returncode != 0:
        pytest.skip("python3-matplotlib is not installed (scripts/install-system-deps.sh)")
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')", timeout=120
    )
    assert execution.error is None, execution.error
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(PNG_MAGIC)


def test_run_code_rejects_bad_input(live, sbx: Sandbox) -> None:
    with live.http() as http:
        response = http.post(f"/v1/sandboxes/{sbx.sandbox_id}/code", json={"code": 5})
    assert response.status_code == 422
    with pytest.raises(InvalidArgumentException):
        sbx.run_code("1", timeout=-1)


def test_killing_a_sandbox_ends_its_open_streams(live) -> None:
    sandbox = live.create()
    handle = sandbox.commands.run("sleep 60", background=True)
    Sandbox.connect(sandbox.sandbox_id, api_url=live.url).kill()
    with pytest.raises(SandboxException, match="stopped"):
        handle.wait()


def test_a_sandbox_whose_agent_dies_is_reclaimed(live) -> None:
    sandbox = live.create()
    runtime = live.manager.get(sandbox.sandbox_id).runtime
    cgroup_dirs = list(runtime.cgroup.dirs.values())
    # Sandboxed code cannot kill its agent (PID 1, see the isolation suite): the host does.
    agent = next(
        pid for pid in runtime.cgroup.procs()
        if Path(f"/proc/{pid}/status").read_text().split("NSpid:")[1].split("\n")[0].split()[-1] == "1"
    )  # fmt: skip
    os.kill(agent, signal.SIGKILL)
    _wait_gone(sandbox, within=5)
    # The API forgets it first; its processes and cgroup go right after.
    deadline = time.monotonic() + 5
    while any(d.exists() for d in cgroup_dirs):
        assert time.monotonic() < deadline, "the dead sandbox's cgroup was not removed"
        time.sleep(0.05)
