"""The console's security over HTTP: sign-in, cookies, CSRF, CSP, sign-out,
revocation, capabilities and the workspace boundary."""

from __future__ import annotations

import re

import httpx
import pytest
from console_helpers import ALL, Platform, has_bwrap

PAGES = ("/playground", "/models", "/usage", "/deployments", "/sandboxes", "/fine-tuning", "/evaluations", "/agents")


def test_pages_need_a_session(platform: Platform):
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        for path in (*PAGES, "/admin", "/"):
            response = client.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/signin", path
        # htmx is told where to go rather than handed a redirect it would follow silently
        response = client.get("/deployments", headers={"HX-Request": "true"})
        assert response.status_code == 204 and response.headers["HX-Redirect"] == "/signin"


def test_sign_in_sets_a_strict_http_only_cookie_and_the_key_stays_on_the_server(platform: Platform):
    tenant = platform.create_tenant("cookie-check", ("inference",))
    client = platform.session(tenant.key)
    cookie = next(c for c in client.cookies.jar if c.name == "tmt_console")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "strict" or cookie.get_nonstandard_attr("samesite") == "strict"
    assert not cookie.secure  # plain HTTP here
    assert tenant.key not in cookie.value
    page = client.get("/playground")
    assert tenant.key not in page.text
    assert tenant.key.split("_", 2)[2] not in page.text  # not even the secret part


def test_behind_tls_the_cookie_is_secure(platform: Platform):
    tenant = platform.create_tenant("tls-check", ("inference",))
    with httpx.Client(base_url=platform.url, timeout=30, headers={"X-Forwarded-Proto": "https"}) as client:
        form = client.get("/signin")
        assert "secure" in form.headers["set-cookie"].lower()
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        client.cookies.set("tmt_console_signin", token)
        answer = client.post("/signin", data={"api_key": tenant.key, "csrf_token": token})
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"].lower()
        assert "secure" in cookie and "samesite=strict" in cookie


def test_a_wrong_key_is_refused_and_audited(platform: Platform):
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/signin").text).group(1)
        answer = client.post("/signin", data={"api_key": "tmt_0123456789abcdef_" + "x" * 43, "csrf_token": token})
        assert answer.status_code == 401 and "Incorrect API key" in answer.text
        assert "tmt_console=" not in answer.headers.get("set-cookie", "")
        # without the form's token (a cross-site sign-in), nothing is even checked
        forged = client.post("/signin", data={"api_key": "anything", "csrf_token": "forged"})
        assert forged.status_code == 403
    with platform.admin() as admin:
        events = admin.get("/audit", params={"action": "auth.failure"}).json()["data"]
    assert any(e["target"] == "POST /signin" for e in events)


def test_every_page_carries_the_csp_and_no_inline_script(platform: Platform):
    client = platform.session(platform.admin_key)
    for path in (*PAGES, "/admin", "/admin/audit", "/signin"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY" and response.headers["cache-control"] == "no-store"
        for tag in re.findall(r"<script\b[^>]*>", response.text):
            assert "src=" in tag or 'type="application/json"' in tag, (path, tag)
        assert not re.search(r"\son[a-z]+=", response.text), path  # no inline event handlers
        assert "style=" not in response.text, path


def test_state_changes_need_the_csrf_token(platform: Platform):
    tenant = platform.create_tenant("csrf-check", ALL)
    client = platform.session(tenant.key)
    body = {"name": "csrf-probe", "command": "sleep 1000", "min_replicas": "0", "max_replicas": "1"}
    assert client.post("/deployments", data=body).status_code == 403
    assert client.post("/deployments", data={**body, "csrf_token": "wrong"}).status_code == 403
    assert client.post("/deployments", data=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {tenant.key}"}) as api:
        assert api.get("/v1/deployments").json()["data"] == []
    created = client.post_form("/deployments", body)
    assert created.status_code == 303 and created.headers["location"] == "/deployments/csrf-probe"
    assert client.post_form("/deployments/csrf-probe/delete").status_code == 303


def test_sign_out_ends_the_session(platform: Platform):
    tenant = platform.create_tenant("signout-check", ("inference",))
    client = platform.session(tenant.key)
    stolen = client.cookies.get("tmt_console")
    assert client.post_form("/signout").headers["location"] == "/signin?ended=signed_out"
    with httpx.Client(base_url=platform.url, cookies={"tmt_console": stolen}) as replay:
        assert replay.get("/usage").status_code == 303


def test_a_revoked_keys_session_is_refused_on_its_next_request(platform: Platform):
    tenant = platform.create_tenant("revoke-check", ("inference",))
    client = platform.session(tenant.key)
    assert client.get("/models").status_code == 200
    platform.revoke(tenant.key_id)
    answer = client.get("/models")
    assert answer.status_code == 303 and answer.headers["location"] == "/signin?ended=revoked"
    assert client.get("/models").status_code == 303  # the session is gone, not merely refused once
    assert "revoked" in client.get("/signin?ended=revoked").text


def test_pages_follow_the_keys_capabilities(platform: Platform):
    tenant = platform.create_tenant("inference-only", ("inference",))
    client = platform.session(tenant.key)
    page = client.get("/playground")
    assert 'href="/deployments"' not in page.text and 'href="/admin"' not in page.text
    for path in ("/deployments", "/sandboxes", "/fine-tuning", "/admin"):
        assert client.get(path).status_code == 403, path
    body = {"name": "not-allowed", "command": "sleep 1"}
    assert client.post_form("/deployments", body).status_code == 403


@pytest.fixture(scope="module")
def owner_objects(platform: Platform) -> dict:
    """One object of each kind the console shows by id, in the owner's workspace."""
    owner = platform.create_tenant("console-owner", ALL)
    headers = {"Authorization": f"Bearer {owner.key}"}
    with httpx.Client(base_url=platform.url, headers=headers, timeout=120) as api:
        models = api.get("/v1/models").json()["data"]
        model = next(m["id"] for m in models if m["capabilities"]["completion_chat"])
        agent = api.post("/v1/agents", json={"model": model, "name": "owned"}).json()
        conversation = api.post(
            "/v1/conversations", json={"agent_id": agent["id"], "inputs": "Hi", "completion_args": {"max_tokens": 2}}
        ).json()
        library = api.post("/v1/libraries", json={"name": "owned"}).json()
        training = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
        file = api.post("/v1/files", files={"file": ("t.jsonl", training)}, data={"purpose": "fine-tune"}).json()
        job = api.post(
            "/v1/fine_tuning/jobs",
            json={"model": model, "training_files": [{"file_id": file["id"]}], "auto_start": False},
        ).json()
        assert api.post("/v1/deployments", json={"name": "owned-web", "command": "sleep 1000"}).status_code == 201
        dataset = b'{"input": "Hi", "reference": "Hello"}\n'
        dataset_id = api.post("/v1/files", files={"file": ("d.jsonl", dataset)}, data={"purpose": "evals"}).json()["id"]
        evaluation = api.post("/v1/evaluations", json={
            "dataset": dataset_id, "targets": [{"model": model}], "metrics": [{"type": "chrf"}],
            "completion_args": {"max_tokens": 2},
        }).json()
        sandbox_id = "sbx-none"  # without bubblewrap, a made-up id (404 either way)
        if has_bwrap:
            sandbox = api.post("/v1/sandboxes", json={"timeout": 300})
            assert sandbox.status_code == 201, sandbox.text
            sandbox_id = sandbox.json()["sandbox_id"]
            api.put(f"/v1/sandboxes/{sandbox_id}/files", params={"path": "/home/user/x"}, content=b"mine")
    return {
        "owner": owner, "name": "owned-web", "conversation_id": conversation["conversation_id"],
        "library_id": library["id"], "job_id": job["id"], "workspace_id": owner.workspace_id,
        "sandbox_id": sandbox_id, "key_id": owner.key_id, "evaluation_id": evaluation["id"], "format": "csv",
    }


# Console routes that name an object: GETs and POSTs (with a valid form).
OBJECT_ROUTES = {
    ("GET", "/deployments/{name}"): None,
    ("GET", "/deployments/{name}/status"): None,
    ("GET", "/deployments/{name}/logs/stream"): None,
    ("GET", "/deployments/{name}/metrics"): None,
    ("POST", "/deployments/{name}/scale"): {"replicas": "2"},
    ("POST", "/deployments/{name}/delete"): {},
    ("GET", "/sandboxes/{sandbox_id}"): None,
    ("POST", "/sandboxes/{sandbox_id}/commands"): {"cmd": "id"},
    ("POST", "/sandboxes/{sandbox_id}/files"): "upload",
    ("GET", "/sandboxes/{sandbox_id}/download"): None,
    ("POST", "/sandboxes/{sandbox_id}/kill"): {},
    ("GET", "/fine-tuning/jobs/{job_id}"): None,
    ("GET", "/fine-tuning/jobs/{job_id}/live"): None,
    ("POST", "/fine-tuning/jobs/{job_id}/cancel"): {},
    ("POST", "/fine-tuning/jobs/{job_id}/start"): {},
    ("GET", "/evaluations/{evaluation_id}"): None,
    ("POST", "/evaluations/{evaluation_id}/cancel"): {},
    ("GET", "/evaluations/{evaluation_id}/chart.svg"): None,
    ("GET", "/evaluations/{evaluation_id}/results.{format}"): None,
    ("GET", "/conversations/{conversation_id}"): None,
    ("POST", "/conversations/{conversation_id}"): {"inputs": "taken over"},
    ("GET", "/libraries/{library_id}"): None,
    ("POST", "/libraries/{library_id}/documents"): "upload",
    ("GET", "/admin/workspaces/{workspace_id}"): None,
    ("POST", "/admin/workspaces/{workspace_id}/keys"): {"name": "intruder", "capabilities": "inference"},
    ("POST", "/admin/workspaces/{workspace_id}/limits"): {"requests_per_minute": "1"},
    ("POST", "/admin/keys/{key_id}/revoke"): {"workspace_id": "x"},
}


def console_object_routes() -> set[tuple[str, str]]:
    from tramontane.console import ROUTERS

    return {
        (method, route.path)
        for router in ROUTERS
        for route in router.routes
        if "{" in route.path and not route.path.startswith("/static/")
        for method in route.methods
    }


def test_every_console_object_route_is_checked(platform: Platform):
    assert console_object_routes() == set(OBJECT_ROUTES)


def test_another_workspaces_objects_are_404_in_the_console(platform: Platform, owner_objects: dict):
    # Another organisation's admin, holding every capability: no 403 can hide a leak.
    with platform.admin() as admin:
        organisation = admin.post("/organisations", json={"name": "stranger-org"}).json()
        workspace = admin.post("/workspaces", json={"name": "stranger", "organisation_id": organisation["id"]}).json()
    stranger = platform.create_key(workspace["id"], (*ALL, "admin"))
    client = platform.session(stranger.key)
    for (method, template), form in sorted(OBJECT_ROUTES.items()):
        path = re.sub(r"\{(\w+)\}", lambda m: owner_objects[m.group(1)], template)
        if method == "GET":
            answer = client.get(path, params={"path": "/home/user/x"} if "download" in path else None)
        elif form == "upload":
            answer = client.post(path, files={"file": ("x.txt", b"intruder")}, data={"csrf_token": client.csrf})
        else:
            answer = client.post_form(path, form)
        assert answer.status_code == 404, (method, path, answer.status_code, answer.text[:300])
    # and the owner's objects are untouched
    owner = owner_objects["owner"]
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {owner.key}"}) as api:
        assert api.get("/v1/deployments/owned-web").status_code == 200
        assert api.get("/v1/models").status_code == 200  # the owner's key still works
        if has_bwrap:
            assert api.get(f"/v1/sandboxes/{owner_objects['sandbox_id']}").status_code == 200
