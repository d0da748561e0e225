"""Signed port links through the whole platform, as a browser uses them: a link
opens an exposed port without the API key, sets a cookie for that port alone so
the page's requests and WebSockets follow, and stops working when it expires,
when it is tampered with, used for another sandbox or port, or when its key is
revoked. Neither the token nor the cookie reaches the server in the sandbox."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tramontane.sandbox import Sandbox
from tramontane.sandbox.port_links import COOKIE, SECRET_FILE, LinkSigner

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

# Echoes each request's path and headers as JSON; a WebSocket gets its request
# line as one text message, then a close.
SERVER = r"""
import base64, hashlib, http.server, json, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
            self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
            line = self.requestline.encode()
            self.wfile.write(b"\x81" + bytes([len(line)]) + line + b"\x88\x02\x03\xe8")
            self.wfile.flush(); self.close_connection = True
            return
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


def serve(sbx: Sandbox, port: int) -> None:
    sbx.files.write("echo.py", SERVER)
    sbx.commands.run(f"python3 echo.py {port}", background=True)
    probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1)'"
    for _ in range(100):
        try:
            sbx.commands.run(probe)
            return
        except Exception:
            time.sleep(0.05)
    raise AssertionError("the server in the sandbox did not start")


@pytest.fixture(scope="module")
def owner(live_server):
    return live_server.create_tenant("port-links", ("sandbox",))


@pytest.fixture(scope="module")
def sbx(live_server, owner):
    sandbox = Sandbox.create(api_url=live_server.url, api_key=owner.key, timeout=300)
    serve(sandbox, 8000)
    yield sandbox
    sandbox.kill()


def create_link(live_server, tenant, sandbox_id: str, port: int, **body) -> httpx.Response:
    return httpx.post(f"{live_server.url}/v1/sandboxes/{sandbox_id}/port-links/{port}", json=body or None,
                      headers=tenant.headers, timeout=30)  # fmt: skip


def token_of(url: str) -> str:
    return urlsplit(url).query.removeprefix("token=")


def test_a_link_opens_the_port_and_its_cookie_the_page_subresources(live_server, owner, sbx) -> None:
    created = create_link(live_server, owner, sbx.sandbox_id, 8000, expires_in=600)
    assert created.status_code == 201, created.text
    link = created.json()
    assert link["path_url"].startswith(f"{live_server.url}/v1/sandboxes/{sbx.sandbox_id}/ports/8000/?token=")
    assert link["url"].startswith(f"http://8000-{sbx.sandbox_id}.sandboxes.test:")
    with httpx.Client(timeout=30) as browser:  # no key: a cookie jar, as a browser has
        first = browser.get(link["path_url"].replace("/?token=", "/page?x=1&token="))
        assert first.status_code == 200, first.text
        assert first.json()["path"] == "/page?x=1"  # the token is not forwarded
        assert first.headers["referrer-policy"] == "no-referrer"
        cookie = first.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert f"Path=/v1/sandboxes/{sbx.sandbox_id}/ports/8000;" in cookie and "Secure" not in cookie
        max_age = int(cookie.split("Max-Age=")[1].split(";")[0])
        assert 590 <= max_age <= 600
        # The page's own requests carry the cookie, which the server never sees.
        again = browser.get(f"{live_server.url}/v1/sandboxes/{sbx.sandbox_id}/ports/8000/style.css")
        assert again.status_code == 200, again.text
        headers = {k.lower(): v for k, v in again.json()["headers"].items()}
        assert COOKIE not in headers.get("cookie", "") and "authorization" not in headers
        assert "set-cookie" not in again.headers  # set once, on the link's own request
        # The cookie is this port's: not another port's, not the API's.
        assert browser.get(f"{live_server.url}/v1/sandboxes/{sbx.sandbox_id}/ports/8001/").status_code == 401
        assert browser.get(f"{live_server.url}/v1/sandboxes/{sbx.sandbox_id}").status_code == 401
        jar_cookie = browser.cookies.get(COOKIE)
    # The page's WebSocket, with the cookie the browser holds; and one opened by the link itself.
    ws_base = live_server.url.replace("http://", "ws://") + f"/v1/sandboxes/{sbx.sandbox_id}/ports/8000"
    with connect(f"{ws_base}/live?v=2", additional_headers={"Cookie": f"{COOKIE}={jar_cookie}"}, open_timeout=30) as ws:
        assert ws.recv(timeout=30) == "GET /live?v=2 HTTP/1.1"
    with connect(f"{ws_base}/live?token={token_of(link['path_url'])}", open_timeout=30) as ws:
        assert ws.recv(timeout=30) == "GET /live HTTP/1.1"


def test_a_link_on_the_ports_host_name(live_server, owner, sbx) -> None:
    link = create_link(live_server, owner, sbx.sandbox_id, 8000).json()
    url = urlsplit(link["url"])
    host = {"Host": url.netloc}
    with httpx.Client(base_url=live_server.url, timeout=30) as browser:
        first = browser.get(f"/deep/page?{url.query}", headers=host)
        assert first.status_code == 200 and first.json()["path"] == "/deep/page"
        cookie = first.headers["set-cookie"]
        assert "Path=/;" in cookie and "Domain" not in cookie  # host-only: this port's name alone
        value = cookie.split(";")[0]
        assert browser.get("/other", headers={**host, "Cookie": value}).json()["path"] == "/other"
    # Without it (a client whose jar goes by the URL's host, not this Host header):
    assert httpx.get(f"{live_server.url}/other", headers=host, timeout=30).status_code == 401


def test_link_expiry_bounds_and_defaults(live_server, owner, sbx) -> None:
    by_sdk = sbx.create_port_link(8000, expires_in=90)
    assert httpx.get(by_sdk["path_url"], timeout=30).status_code == 200
    link = create_link(live_server, owner, sbx.sandbox_id, 8000).json()
    left = datetime.fromisoformat(link["expires_at"]) - datetime.now(timezone.utc)
    assert 3500 < left.total_seconds() <= 3600
    for bad in (0, -5, 24 * 3600 + 1, "soon"):
        refused = create_link(live_server, owner, sbx.sandbox_id, 8000, expires_in=bad)
        assert refused.status_code == 422, (bad, refused.text)
    assert create_link(live_server, owner, sbx.sandbox_id, 70000).status_code == 422
    assert create_link(live_server, owner, "0123456789abcdef0123", 8000).status_code == 404
    inference_only = live_server.create_key(owner.workspace_id, ("inference",))
    assert create_link(live_server, inference_only, sbx.sandbox_id, 8000).status_code == 403


def test_creating_a_link_is_audited_without_its_token(live_server, owner, sbx) -> None:
    link = create_link(live_server, owner, sbx.sandbox_id, 8000, expires_in=120).json()
    with live_server.admin() as admin:
        events = admin.get("/audit", params={"action": "sandbox.port_link.create"}).json()["data"]
    mine = [e for e in events if e["workspace_id"] == owner.workspace_id]
    assert mine and mine[0]["actor"] == f"tmt_{owner.key_id}"
    assert mine[0]["target"] == f"sandbox {sbx.sandbox_id} port 8000"
    token = token_of(link["path_url"])
    assert all(token.split(".")[-1] not in str(e) for e in events)


def test_tampered_foreign_and_expired_tokens_are_refused(live_server, owner, sbx) -> None:
    link = create_link(live_server, owner, sbx.sandbox_id, 8000, expires_in=600).json()
    token = token_of(link["path_url"])
    key_id, expires, mac = token.split(".")
    base = f"{live_server.url}/v1/sandboxes/{sbx.sandbox_id}/ports"
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    tampered = [f"{key_id}.{expires}.{flipped}", f"{key_id}.{int(expires) + 3600}.{mac}", "garbage", token + "x"]
    for bad in tampered:
        refused = httpx.get(f"{base}/8000/", params={"token": bad}, timeout=30)
        assert refused.status_code == 401, (bad, refused.text)
        assert "set-cookie" not in refused.headers
        with pytest.raises(InvalidStatus) as socket_refused:
            connect(f"{base.replace('http://', 'ws://')}/8000/?token={bad}", open_timeout=30)
        assert socket_refused.value.response.status_code == 401
    # Signed for port 8000: not valid on 8001.
    assert httpx.get(f"{base}/8001/", params={"token": token}, timeout=30).status_code == 401
    # Signed with the server's own secret, but expired.
    signer = LinkSigner((live_server.tenancy.home / SECRET_FILE).read_bytes().strip())
    stale = signer.sign(sbx.sandbox_id, 8000, key_id, signer.now() - 1)
    expired = httpx.get(f"{base}/8000/", params={"token": stale}, timeout=30)
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "link_expired"
    assert "token=" not in expired.text and stale not in expired.text


def test_a_link_of_one_workspace_never_opens_another_workspaces_sandbox(live_server, owner, sbx) -> None:
    stranger = live_server.create_tenant("port-links-stranger", ("sandbox",))
    theirs = Sandbox.create(api_url=live_server.url, api_key=stranger.key, timeout=120)
    try:
        serve(theirs, 8000)
        mine = token_of(create_link(live_server, owner, sbx.sandbox_id, 8000).json()["path_url"])
        # My link, on their sandbox's URL; their key cannot sign for mine, nor mine for theirs.
        pointed = httpx.get(f"{live_server.url}/v1/sandboxes/{theirs.sandbox_id}/ports/8000/", params={"token": mine})
        assert pointed.status_code == 401
        assert create_link(live_server, stranger, sbx.sandbox_id, 8000).status_code == 404
        assert create_link(live_server, owner, theirs.sandbox_id, 8000).status_code == 404
        # A token forged with the right secret under a key of another workspace: the
        # signature holds, the key does not own the sandbox.
        signer = LinkSigner((live_server.tenancy.home / SECRET_FILE).read_bytes().strip())
        forged = signer.sign(theirs.sandbox_id, 8000, owner.key_id, signer.now() + 60)
        refused = httpx.get(f"{live_server.url}/v1/sandboxes/{theirs.sandbox_id}/ports/8000/", params={"token": forged})
        assert refused.status_code == 404 and "set-cookie" not in refused.headers
        with pytest.raises(InvalidStatus) as socket_refused:
            connect(live_server.url.replace("http://", "ws://") + f"/v1/sandboxes/{theirs.sandbox_id}/ports/8000/"
                    f"?token={forged}", open_timeout=30)  # fmt: skip
        assert socket_refused.value.response.status_code == 404
    finally:
        theirs.kill()


def test_a_link_stops_with_its_sandbox(live_server, owner) -> None:
    short_lived = Sandbox.create(api_url=live_server.url, api_key=owner.key, timeout=120)
    serve(short_lived, 8000)
    link = short_lived.create_port_link(8000)
    with httpx.Client(timeout=30) as browser:
        assert browser.get(link["path_url"]).status_code == 200
        short_lived.kill()
        gone = browser.get(f"{live_server.url}/v1/sandboxes/{short_lived.sandbox_id}/ports/8000/")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "sandbox_not_found"


def test_revoking_the_key_kills_its_links(live_server, owner, sbx) -> None:
    key = live_server.create_key(owner.workspace_id, ("sandbox",))
    link = create_link(live_server, key, sbx.sandbox_id, 8000, expires_in=600).json()
    with httpx.Client(timeout=30) as browser:
        assert browser.get(link["path_url"]).status_code == 200
        with live_server.admin() as admin:
            assert admin.delete(f"/keys/{key.key_id}").status_code < 300
        revoked = browser.get(f"{live_server.url}/v1/sandboxes/{sbx.sandbox_id}/ports/8000/")
        assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "api_key_revoked"
        assert browser.get(link["path_url"]).status_code == 401


def test_link_traffic_counts_against_the_keys_limits(live_server, owner, sbx) -> None:
    with live_server.admin() as admin:
        body = {"name": "limited", "capabilities": ["sandbox"], "limits": {"requests_per_minute": 3}}
        created = admin.post(f"/workspaces/{owner.workspace_id}/keys", json=body)
    assert created.status_code == 201, created.text
    limited = type(owner)(owner.workspace_id, created.json()["id"], created.json()["key"])
    link = create_link(live_server, limited, sbx.sandbox_id, 8000, expires_in=600).json()  # the first request
    with httpx.Client(timeout=30) as browser:
        assert [browser.get(link["path_url"]).status_code for _ in range(3)] == [200, 200, 429]
