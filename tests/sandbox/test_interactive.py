"""Terminals, exposed ports, file watching and metrics of tier-1 sandboxes, through
the REST API, a WebSocket and the SDK, as a user's client sees them."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tramontane.sandbox import Sandbox
from tramontane.sandbox.client import NotFoundException
from tramontane.sandbox.client_io import PtySize

if TYPE_CHECKING:  # a plain import would be ambiguous when tests/server runs in the same session
    from conftest import LiveSandboxes

ECHO_SERVER = r"""
import http.server, json, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "session=planted; Path=/"); self.send_header("Link", "</a>; rel=a")
        self.send_header("Link", "</b>; rel=b")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""

# A WebSocket echo server on the standard library alone (the sandbox has the host's /usr).
WS_ECHO_SERVER = r"""
import base64, hashlib, socketserver, struct, sys
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        lines = []
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            lines.append(line.decode())
        headers = {l.split(":")[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"]
                 + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        self.wfile.write(b"\x81" + bytes([len(lines[0])]) + lines[0].encode())  # the request line, as text
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            size = head[1] & 0x7F
            if size == 126:
                size = struct.unpack(">H", self.rfile.read(2))[0]
            mask = self.rfile.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(size)))
            if head[0] & 0x0F == 8:  # the client's close: its code is noted down
                open("closed.txt", "w").write(str(struct.unpack(">H", data[:2])[0]) if data else "none")
                return
            if data == b"bye":  # a close of the server's own, with its code and reason
                self.wfile.write(b"\x88\x06" + struct.pack(">H", 4001) + b"done")
                return
            length = bytes([size]) if size < 126 else b"\x7e" + struct.pack(">H", size)
            self.wfile.write(bytes([0x80 | (head[0] & 0x0F)]) + length + data)
socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


def ws_url(live: LiveSandboxes, sandbox_id: str, query: str = "") -> str:
    return live.url.replace("http://", "ws://") + f"/v1/sandboxes/{sandbox_id}/pty/ws{query}"


def read_until(ws: ClientConnection, needle: bytes, timeout: float = 15) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        frame = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(frame, bytes):
            seen += frame
    return seen


def serve(sbx: Sandbox, port: int) -> None:
    """Starts the echo server on `port` inside the sandbox and waits until it listens."""
    sbx.files.write("echo_server.py", ECHO_SERVER)
    sbx.commands.run(f"python3 echo_server.py {port}", background=True)
    probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'"
    for _ in range(100):
        try:
            sbx.commands.run(probe)
            return
        except Exception:
            time.sleep(0.05)
    raise AssertionError("the server in the sandbox did not start")


# -- terminals


def test_terminal_over_websocket_runs_a_shell_resizes_and_exits(live: LiveSandboxes, sbx: Sandbox) -> None:
    with connect(ws_url(live, sbx.sandbox_id, "?rows=30&cols=100"), open_timeout=15) as ws:
        start = json.loads(ws.recv(timeout=15))
        assert start["type"] == "start" and start["pid"] > 1
        ws.send(b"stty size; tty; echo $((6*7))\n")
        seen = read_until(ws, b"42")
        assert b"30 100" in seen and b"/dev/pts/" in seen
        ws.send(json.dumps({"type": "resize", "rows": 40, "cols": 120}))
        ws.send(json.dumps({"type": "input", "data": "stty size\n"}))
        read_until(ws, b"40 120")
        ws.send(json.dumps({"type": "bogus"}))
        frame = ws.recv(timeout=15)
        while not isinstance(frame, str):  # the terminal's output may come first
            frame = ws.recv(timeout=15)
        error = json.loads(frame)
        assert error["type"] == "error"
        assert error["error"]["code"] == "invalid_argument"
        ws.send(b"exit 3\n")
        while True:
            frame = ws.recv(timeout=15)
            if isinstance(frame, str):
                assert json.loads(frame) == {"type": "exit", "exit_code": 3}
                break
    assert sbx.commands.list() == []  # the shell is gone


def test_closing_the_websocket_kills_the_shell(live: LiveSandboxes, sbx: Sandbox) -> None:
    with connect(ws_url(live, sbx.sandbox_id), open_timeout=15) as ws:
        pid = json.loads(ws.recv(timeout=15))["pid"]
        ws.send(b"sleep 1000\n")
        assert any(p.pid == pid for p in sbx.commands.list())
    deadline = time.monotonic() + 10
    while any(p.pid == pid for p in sbx.commands.list()):
        assert time.monotonic() < deadline, "the shell outlived its socket"
        time.sleep(0.05)


def test_terminal_websocket_of_another_workspace_is_refused(live: LiveSandboxes) -> None:
    sbx = live.create(timeout=60, api_key=None)
    try:
        with pytest.raises(Exception) as refused:
            with connect(ws_url(live, "nosuchsandbox"), open_timeout=15):
                pass
        assert "404" in str(refused.value)
    finally:
        sbx.kill()


def test_terminal_through_the_sdk(sbx: Sandbox) -> None:
    handle = sbx.pty.create(PtySize(rows=10, cols=50))
    output = iter(handle)
    handle.send_stdin(b"stty size\n")
    seen = b""
    while b"10 50" not in seen:
        seen += next(output)
    handle.resize(PtySize(rows=12, cols=60))
    handle.send_stdin("stty size; exit 5\n")
    seen = b"".join(output)
    assert b"12 60" in seen and handle.exit_code == 5


def test_terminal_cannot_inject_input_elsewhere(live: LiveSandboxes, sbx: Sandbox) -> None:
    """TIOCSTI (pushing keystrokes into a terminal) is refused by seccomp, even on
    the sandbox's own terminal; and the sandbox sees only its own ptys."""
    sbx.files.write(
        "probe.py",
        "import fcntl, termios\n"
        "try:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('IN' + 'JECTED')\n"
        "except OSError as e:\n    print('refused', e.errno)\n",
    )
    with connect(ws_url(live, sbx.sandbox_id), open_timeout=15) as ws:
        json.loads(ws.recv(timeout=15))
        ws.send(b"python3 probe.py; ls /dev/pts; echo DO''NE\n")
        seen = read_until(ws, b"DONE\r\n")
    assert b"INJECTED" not in seen and b"refused 1" in seen
    listed = seen.split(b"DONE")[0].split(b"refused 1")[-1].split()
    assert sorted(listed) == [b"0", b"ptmx"]


# -- exposed ports


def test_port_is_served_through_the_router(live: LiveSandboxes, sbx: Sandbox) -> None:
    serve(sbx, 8000)
    url = sbx.get_host(8000)
    with httpx.Client(timeout=30) as http:
        got = http.get(f"{url}/some/page?x=1", headers={"Authorization": "Bearer tmt_secret", "Cookie": "a=b"})
        assert got.status_code == 200, got.text
        echoed = got.json()
        assert echoed["path"] == "/some/page?x=1"
        headers = {k.lower(): v for k, v in echoed["headers"].items()}
        assert "authorization" not in headers and "cookie" not in headers  # the platform's credentials stay out
        assert headers["x-forwarded-prefix"] == f"/v1/sandboxes/{sbx.sandbox_id}/ports/8000"
        # The tenant's page is an origin of its own in a browser, and sets no cookie on the platform's.
        assert got.headers["content-security-policy"].startswith("sandbox ")
        assert "set-cookie" not in got.headers and got.headers.get_list("link") == ["</a>; rel=a", "</b>; rel=b"]
        assert int(got.headers["content-length"]) == len(got.content)
        body = bytes(range(256)) * 8192  # 2 MiB both ways, through the flow control
        posted = http.post(f"{url}/upload", content=body)
        assert posted.status_code == 201 and posted.content == body
        assert http.get(url).status_code == 200


def test_port_by_host_name(live: LiveSandboxes, sbx: Sandbox) -> None:
    """{port}-{id}.{domain}: the server sees itself at the root, and every path on
    that name is the sandbox's (the platform's API does not answer there)."""
    serve(sbx, 8003)
    host = f"8003-{sbx.sandbox_id}.sandboxes.test"
    with httpx.Client(base_url=live.url, timeout=30) as http:
        got = http.get("/v1/sandboxes?x=1", headers={"Host": host})
        assert got.status_code == 200 and got.json()["path"] == "/v1/sandboxes?x=1"
        assert "x-forwarded-prefix" not in {k.lower() for k in got.json()["headers"]}
        assert http.get("/", headers={"Host": host.upper()}).status_code == 200
        assert http.get("/", headers={"Host": host, "x-tenant": "mallory"}).status_code == 404
        assert http.get("/", headers={"Host": f"8004-{sbx.sandbox_id}.sandboxes.test"}).status_code == 502
        assert http.get("/", headers={"Host": "8003-0123456789abcdef0123.sandboxes.test"}).status_code == 404


def serve_websocket(sbx: Sandbox, port: int, path: str, timeout: float = 20) -> ClientConnection:
    """Starts the WebSocket echo server on `port` in the sandbox; a socket to it."""
    sbx.files.write("ws_echo.py", WS_ECHO_SERVER)
    sbx.commands.run(f"python3 ws_echo.py {port}", background=True)
    url = sbx.get_host(port).replace("http://", "ws://") + path
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(url, open_timeout=timeout)
        except InvalidStatus as exc:  # 502 until it listens
            assert time.monotonic() < deadline, f"the WebSocket server did not start: {exc.response.body!r}"
            time.sleep(0.1)


def test_websocket_through_a_port(live: LiveSandboxes, sbx: Sandbox) -> None:
    with serve_websocket(sbx, 8005, "/socket?room=1") as ws:
        # The server's first frame came with its handshake's answer, and is not lost.
        assert ws.recv(timeout=15) == "GET /socket?room=1 HTTP/1.1\r\n"
        ws.send("hello")
        assert ws.recv(timeout=15) == "hello"
        ws.send(bytes(range(200)) * 5)
        assert ws.recv(timeout=15) == bytes(range(200)) * 5
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    # By host name, the server sees itself at the root.
    platform = httpx.URL(live.url)
    reach = socket.create_connection((platform.host, platform.port), timeout=15)
    by_name = f"ws://8005-{sbx.sandbox_id}.sandboxes.test/root?x=2"
    with connect(by_name, sock=reach, open_timeout=15) as ws:
        assert ws.recv(timeout=15) == "GET /root?x=2 HTTP/1.1\r\n"
        ws.close(code=4002)  # the client's close reaches the server with its code
    deadline = time.monotonic() + 15
    while not sbx.files.exists("closed.txt"):
        assert time.monotonic() < deadline, "the server inside never saw the client's close"
        time.sleep(0.05)
    assert sbx.files.read("closed.txt") == "4002"
    refused = sbx.get_host(8006).replace("http://", "ws://") + "/"
    with pytest.raises(InvalidStatus) as answer:
        connect(refused, open_timeout=15)
    assert answer.value.response.status_code == 502


def test_websocket_through_a_port_closes_when_the_sandbox_goes(live: LiveSandboxes) -> None:
    doomed = live.create(timeout=60)
    with serve_websocket(doomed, 8007, "/") as ws:
        ws.recv(timeout=15)
        doomed.kill()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def test_port_not_listening_is_a_clear_502(sbx: Sandbox) -> None:
    got = httpx.get(sbx.get_host(8001) + "/", timeout=30)
    assert got.status_code == 502
    assert got.json()["error"]["code"] == "port_not_listening"
    assert "8001" in got.json()["error"]["message"]
    assert httpx.get(sbx.get_host(0) + "/", timeout=30).status_code == 422
    assert httpx.get(sbx.get_host(70000) + "/", timeout=30).status_code == 422


def test_port_of_another_workspace_is_not_found(live: LiveSandboxes) -> None:
    owner = Sandbox.create(api_url=live.url, timeout=60)
    owner._http.headers["x-tenant"] = "alice"
    tenant_box = httpx.Client(base_url=live.url, headers={"x-tenant": "alice"}, timeout=30)
    try:
        created = tenant_box.post("/v1/sandboxes", json={"timeout": 60}).json()["sandbox_id"]
        got = httpx.get(f"{live.url}/v1/sandboxes/{created}/ports/8000/", headers={"x-tenant": "mallory"}, timeout=30)
        assert got.status_code == 404
        tenant_box.delete(f"/v1/sandboxes/{created}")
    finally:
        owner.kill()
        tenant_box.close()


@pytest.fixture
def host_server() -> Iterator[int]:
    """A TCP server on the host's loopback that answers anything with HTTP 200."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nHOST")
            conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def test_port_proxy_reaches_neither_host_ports_nor_other_sandboxes(
    live: LiveSandboxes, sbx: Sandbox, host_server: int
) -> None:
    assert httpx.get(f"http://127.0.0.1:{host_server}/").text == "HOST"  # it does listen
    got = httpx.get(sbx.get_host(host_server) + "/", timeout=30)
    assert got.status_code == 502 and "HOST" not in got.text
    with pytest.raises(InvalidStatus) as upgrade:  # nor through a WebSocket
        connect(sbx.get_host(host_server).replace("http://", "ws://") + "/", open_timeout=15)
    assert upgrade.value.response.status_code == 502
    other = live.create(timeout=60)
    try:
        serve(other, 8002)
        assert httpx.get(other.get_host(8002) + "/", timeout=30).status_code == 200
        assert httpx.get(sbx.get_host(8002) + "/", timeout=30).status_code == 502
    finally:
        other.kill()


# -- file watching


def collect(handle: object, wanted: int, timeout: float = 10) -> list:
    events: list = []
    deadline = time.monotonic() + timeout
    while len(events) < wanted and time.monotonic() < deadline:
        events += handle.get_new_events()  # type: ignore[attr-defined]
        time.sleep(0.05)
    return events


def test_watch_dir_streams_create_write_rename_remove(sbx: Sandbox) -> None:
    sbx.files.make_dir("watched")
    handle = sbx.files.watch_dir("watched", recursive=True)
    try:
        sbx.files.write("watched/a.txt", "one")
        sbx.commands.run("mv watched/a.txt watched/b.txt && mkdir watched/sub && rm watched/b.txt")
        sbx.files.write("watched/sub/deep.txt", "two")
        events = collect(handle, 8)
    finally:
        handle.stop()
    seen = [(e.type, e.name) for e in events]
    for expected in [("create", "a.txt"), ("write", "a.txt"), ("rename", "a.txt"), ("create", "b.txt"),
                     ("create", "sub"), ("remove", "b.txt"), ("create", "sub/deep.txt")]:  # fmt: skip
        assert expected in seen, (expected, seen)


def test_watch_of_a_missing_path_is_404_and_of_a_file_400(sbx: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir("no/such/dir")
    sbx.files.write("plain.txt", "x")
    got = sbx._http.get(sbx._path("files/watch"), params={"path": "plain.txt"})
    assert got.status_code == 400 and "not a directory" in got.json()["error"]["message"]


# -- metrics


def test_metrics_report_cpu_memory_and_disk(sbx: Sandbox) -> None:
    before = sbx.get_metrics()
    sbx.commands.run("python3 -c 'x = 0\nfor i in range(3_000_000): x += i'")
    sbx.commands.run("head -c 5000000 /dev/urandom > big.bin")
    after = sbx.get_metrics()
    assert after["cpu_usage_seconds"] > before["cpu_usage_seconds"] + 0.05
    assert 0 < after["cpu_used_pct"] <= 100
    assert after["disk_used_bytes"] >= before["disk_used_bytes"] + 4_000_000
    assert after["disk_total_bytes"] > after["disk_used_bytes"]
    assert 0 < after["memory_bytes"] <= after["memory_limit_bytes"]


# -- tier 2: the same surfaces in a microVM


@pytest.mark.kvm
def test_terminal_port_watch_and_metrics_in_a_microvm(live_vm: LiveSandboxes, host_server: int) -> None:
    vm = live_vm.create(template="microvm", timeout=300)
    try:
        with connect(ws_url(live_vm, vm.sandbox_id, "?rows=20&cols=70"), open_timeout=60) as ws:
            assert json.loads(ws.recv(timeout=60))["type"] == "start"
            ws.send(b"stty size; id -u; exit\n")
            assert b"20 70" in read_until(ws, b"1000", timeout=60)
        serve(vm, 8000)
        got = httpx.get(vm.get_host(8000) + "/vm?q=1", timeout=60)
        assert got.status_code == 200 and got.json()["path"] == "/vm?q=1"
        assert httpx.get(vm.get_host(8001) + "/", timeout=60).status_code == 502
        assert httpx.get(vm.get_host(host_server) + "/", timeout=60).status_code == 502  # not the host's port
        with serve_websocket(vm, 8005, "/in-vm", timeout=60) as ws:
            assert ws.recv(timeout=60) == "GET /in-vm HTTP/1.1\r\n"
            ws.send(b"\x00binary")
            assert ws.recv(timeout=60) == b"\x00binary"
        handle = vm.files.watch_dir(".")
        try:
            vm.files.write("seen.txt", "x")
            events = collect(handle, 2, timeout=30)
        finally:
            handle.stop()
        assert ("create", "seen.txt") in [(e.type, e.name) for e in events]
        metrics = vm.get_metrics()
        assert metrics["cpu_usage_seconds"] > 0 and metrics["disk_total_bytes"] > 0
    finally:
        vm.kill()
