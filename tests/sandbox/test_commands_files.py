"""Commands and files through the REST API and the Python SDK."""

from __future__ import annotations

import json
import time

import pytest

from tramontane.sandbox import CommandExitException, Sandbox
from tramontane.sandbox.client import InvalidArgumentException, NotFoundException


def test_run_collects_output_and_exit_code(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo out; echo err >&2; whoami; pwd")
    assert result.exit_code == 0
    assert result.stdout == "out\nuser\n/home/user\n"
    assert result.stderr == "err\n"


def test_non_zero_exit_raises_like_e2b(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitException) as caught:
        sbx.commands.run("echo partial; exit 7")
    assert caught.value.exit_code == 7
    assert caught.value.stdout == "partial\n"


def test_env_and_cwd(live, sbx: Sandbox) -> None:
    sbx.files.make_dir("project/sub")
    result = sbx.commands.run('echo "$GREETING $SANDBOX_WIDE"; pwd', cwd="project/sub", envs={"GREETING": "hi"})
    assert result.stdout == "hi \n/home/user/project/sub\n"
    with live.create(envs={"SANDBOX_WIDE": "everywhere"}) as other:
        assert other.commands.run("echo $SANDBOX_WIDE").stdout == "everywhere\n"


def test_missing_cwd_is_a_client_error(sbx: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sbx.commands.run("true", cwd="/nope")
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("true", envs={"BAD NAME": "x"})


def test_stream_is_incremental_ndjson(live, sbx: Sandbox) -> None:
    body = {"cmd": "echo one; sleep 0.5; echo two >&2; exit 3", "stream": True}
    arrivals = []
    with live.http() as http, http.stream("POST", f"/v1/sandboxes/{sbx.sandbox_id}/commands", json=body) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            arrivals.append((time.monotonic(), json.loads(line)))
    events = [e for _, e in arrivals]
    assert [e["type"] for e in events] == ["start", "stdout", "stderr", "exit"]
    assert events[1]["data"] == "one\n" and events[2]["data"] == "two\n"
    assert events[3]["exit_code"] == 3
    # "one" arrived while the command still slept: streamed, not buffered to the end.
    assert arrivals[2][0] - arrivals[1][0] > 0.3


def test_stream_as_server_sent_events(live, sbx: Sandbox) -> None:
    body = {"cmd": "echo hi"}
    headers = {"Accept": "text/event-stream"}
    with live.http() as http:
        response = http.post(f"/v1/sandboxes/{sbx.sandbox_id}/commands", json=body, headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event: stdout\ndata: " in response.text and "event: exit\n" in response.text


def test_non_streamed_json_result(live, sbx: Sandbox) -> None:
    with live.http() as http:
        response = http.post(
            f"/v1/sandboxes/{sbx.sandbox_id}/commands", json={"cmd": "echo hi; false", "stream": False}
        )
    assert response.status_code == 200
    body = response.json()
    assert (body["stdout"], body["exit_code"], body["error"]) == ("hi\n", 1, None)


def test_command_timeout_kills_it(sbx: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(CommandExitException) as caught:
        sbx.commands.run("sleep 30", timeout=0.5)
    assert caught.value.error == "timeout" and caught.value.exit_code == 137
    assert time.monotonic() - started < 5


def test_background_process_list_and_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 60", background=True)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert handle.pid in listed and listed[handle.pid].cmd == "sleep 60"
    assert sbx.commands.kill(handle.pid)
    with pytest.raises(CommandExitException) as caught:
        handle.wait()
    assert caught.value.exit_code == 137
    assert handle.pid not in {p.pid for p in sbx.commands.list()}
    assert not sbx.commands.kill(handle.pid)


def test_background_keeps_running_after_disconnect(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 0.3; echo done > marker; sleep 60", background=True)
    handle.disconnect()
    time.sleep(0.8)
    assert sbx.files.read("marker") == "done\n"
    assert handle.pid in {p.pid for p in sbx.commands.list()}


def test_closing_a_foreground_stream_kills_the_command(live, sbx: Sandbox) -> None:
    with (
        live.http() as http,
        http.stream("POST", f"/v1/sandboxes/{sbx.sandbox_id}/commands", json={"cmd": "echo up; sleep 60"}) as response,
    ):
        lines = response.iter_lines()
        pid = json.loads(next(lines))["pid"]
    deadline = time.monotonic() + 5
    while pid in {p.pid for p in sbx.commands.list()}:
        assert time.monotonic() < deadline, "the abandoned command kept running"
        time.sleep(0.05)


def test_on_stdout_callbacks(sbx: Sandbox) -> None:
    seen: list[str] = []
    sbx.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=seen.append)
    assert "".join(seen) == "1\n2\n3\n"


def test_files_round_trip(sbx: Sandbox) -> None:
    payload = bytes(range(256)) * 1000
    info = sbx.files.write("data/blob.bin", payload)
    assert (info.path, info.size, info.type) == ("/home/user/data/blob.bin", len(payload), "file")
    assert sbx.files.read("data/blob.bin", format="bytes") == payload
    sbx.files.write("/tmp/note.txt", "héllo")
    assert sbx.files.read("/tmp/note.txt") == "héllo"
    assert (
        sbx.commands.run("sha256sum data/blob.bin").stdout.split()[0]
        == __import__("hashlib").sha256(payload).hexdigest()
    )


def test_files_list_info_rename_remove(sbx: Sandbox) -> None:
    sbx.files.write("tree/a.txt", "a")
    sbx.files.write("tree/deep/b.txt", "bb")
    sbx.commands.run("ln -s a.txt tree/link")
    top = {e.name: e for e in sbx.files.list("tree")}
    assert set(top) == {"a.txt", "deep", "link"}
    assert top["deep"].type == "dir" and top["link"].type == "symlink" and top["link"].symlink_target == "a.txt"
    assert {e.name for e in sbx.files.list("tree", depth=2)} == {"a.txt", "deep", "link", "b.txt"}
    assert sbx.files.get_info("tree/deep/b.txt").size == 2
    sbx.files.rename("tree/a.txt", "tree/c.txt")
    assert sbx.files.exists("tree/c.txt") and not sbx.files.exists("tree/a.txt")
    assert sbx.files.make_dir("tree/new") and not sbx.files.make_dir("tree/new")
    sbx.files.remove("tree")
    assert not sbx.files.exists("tree")


def test_file_errors(live, sbx: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sbx.files.read("missing.txt")
    with live.http() as http:
        response = http.get(f"/v1/sandboxes/{sbx.sandbox_id}/files", params={"path": "missing.txt"})
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
        forbidden = http.put(f"/v1/sandboxes/{sbx.sandbox_id}/files", params={"path": "/usr/evil"}, content=b"x")
        assert forbidden.status_code == 403
        too_big = b"x" * (live.manager.config.max_file_bytes + 1)
        response = http.put(f"/v1/sandboxes/{sbx.sandbox_id}/files", params={"path": "big"}, content=iter([too_big]))
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_large"
