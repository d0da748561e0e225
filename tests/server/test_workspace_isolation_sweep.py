"""Every route that names an object, tried by another workspace's key: 404 each time.

The routes come from the app's OpenAPI document, so a new route that takes an
object id fails this test until it is listed in REQUESTS (with a valid body, so
that the answer cannot be a 422 from validation) and shown to answer 404.
Workspace `owner` makes one object of each kind; `stranger` holds every
capability, so a 403 cannot hide a leak either.

The web console's pages (outside the OpenAPI document) have their own sweep, built
the same way: tests/console/test_security.py.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME

ALL = ("inference", "deploy", "sandbox", "fine-tune")

# (method, path template) -> (query, JSON body or raw bytes); ids are filled from the owner's objects.
REQUESTS: dict[tuple[str, str], tuple[dict, object]] = {
    ("get", "/v1/models/{model_id}"): ({}, None),
    ("delete", "/v1/models/{model_id}"): ({}, None),
    ("get", "/v1/agents/{agent_id}"): ({}, None),
    ("delete", "/v1/agents/{agent_id}"): ({}, None),
    ("patch", "/v1/agents/{agent_id}"): ({}, {"description": "taken over"}),
    ("patch", "/v1/agents/{agent_id}/version"): ({"version": 0}, None),
    ("get", "/v1/agents/{agent_id}/versions"): ({}, None),
    ("get", "/v1/agents/{agent_id}/versions/{version}"): ({}, None),
    ("put", "/v1/agents/{agent_id}/aliases"): ({"alias": "stable", "version": 0}, None),
    ("get", "/v1/agents/{agent_id}/aliases"): ({}, None),
    ("delete", "/v1/agents/{agent_id}/aliases"): ({"alias": "stable"}, None),
    ("get", "/v1/conversations/{conversation_id}"): ({}, None),
    ("delete", "/v1/conversations/{conversation_id}"): ({}, None),
    ("post", "/v1/conversations/{conversation_id}"): ({}, {"inputs": "hello", "stream": False}),
    ("post", "/v1/conversations/{conversation_id}/restart"): ({}, {"inputs": "hi", "from_entry_id": "{entry_id}"}),
    ("get", "/v1/conversations/{conversation_id}/history"): ({}, None),
    ("get", "/v1/conversations/{conversation_id}/messages"): ({}, None),
    ("get", "/v1/libraries/{library_id}"): ({}, None),
    ("delete", "/v1/libraries/{library_id}"): ({}, None),
    ("get", "/v1/libraries/{library_id}/documents"): ({}, None),
    ("post", "/v1/libraries/{library_id}/documents"): ({}, "multipart"),
    ("get", "/v1/libraries/{library_id}/documents/{document_id}"): ({}, None),
    ("delete", "/v1/libraries/{library_id}/documents/{document_id}"): ({}, None),
    ("get", "/v1/libraries/{library_id}/documents/{document_id}/status"): ({}, None),
    ("get", "/v1/libraries/{library_id}/documents/{document_id}/text_content"): ({}, None),
    ("get", "/v1/sandboxes/{sandbox_id}"): ({}, None),
    ("delete", "/v1/sandboxes/{sandbox_id}"): ({}, None),
    ("post", "/v1/sandboxes/{sandbox_id}/timeout"): ({}, {"timeout": 30}),
    ("post", "/v1/sandboxes/{sandbox_id}/pause"): ({}, None),
    ("post", "/v1/sandboxes/{sandbox_id}/resume"): ({}, None),
    ("get", "/v1/sandboxes/{sandbox_id}/metrics"): ({}, None),
    ("post", "/v1/sandboxes/{sandbox_id}/commands"): ({}, {"cmd": "id", "stream": False}),
    ("get", "/v1/sandboxes/{sandbox_id}/processes"): ({}, None),
    ("delete", "/v1/sandboxes/{sandbox_id}/processes"): ({}, None),
    ("delete", "/v1/sandboxes/{sandbox_id}/processes/{pid}"): ({}, None),
    ("get", "/v1/sandboxes/{sandbox_id}/files"): ({"path": "/home/user/secret.txt"}, None),
    ("put", "/v1/sandboxes/{sandbox_id}/files"): ({"path": "/home/user/secret.txt"}, b"overwritten"),
    ("delete", "/v1/sandboxes/{sandbox_id}/files"): ({"path": "/home/user/secret.txt"}, None),
    ("get", "/v1/sandboxes/{sandbox_id}/files/list"): ({"path": "/home/user"}, None),
    ("get", "/v1/sandboxes/{sandbox_id}/files/info"): ({"path": "/home/user/secret.txt"}, None),
    ("post", "/v1/sandboxes/{sandbox_id}/files/mkdir"): ({"path": "/home/user/new"}, None),
    ("post", "/v1/sandboxes/{sandbox_id}/files/rename"): (
        {},
        {"old_path": "/home/user/secret.txt", "new_path": "/home/user/moved.txt"},
    ),
    ("post", "/v1/sandboxes/{sandbox_id}/code"): ({}, {"code": "1 + 1"}),
    ("post", "/v1/sandboxes/{sandbox_id}/pty"): ({}, {"rows": 24, "cols": 80}),
    ("post", "/v1/sandboxes/{sandbox_id}/pty/{pid}/input"): ({}, b"rm -rf /home/user\n"),
    ("post", "/v1/sandboxes/{sandbox_id}/pty/{pid}/resize"): ({}, {"rows": 30, "cols": 90}),
    ("get", "/v1/sandboxes/{sandbox_id}/files/watch"): ({"path": "/home/user"}, None),
    ("post", "/v1/sandboxes/{sandbox_id}/port-links/{port}"): ({}, {"expires_in": 60}),
    **{
        (method, path): ({}, b"intruder" if method in ("post", "put", "patch") else None)
        for method in ("get", "post", "put", "patch", "delete")
        for path in ("/v1/sandboxes/{sandbox_id}/ports/{port}", "/v1/sandboxes/{sandbox_id}/ports/{port}/{path}")
    },
    ("get", "/v1/templates/{template}"): ({}, None),
    ("delete", "/v1/templates/{template}"): ({}, None),
    ("get", "/v1/files/{file_id}"): ({}, None),
    ("delete", "/v1/files/{file_id}"): ({}, None),
    ("get", "/v1/files/{file_id}/content"): ({}, None),
    ("get", "/v1/fine_tuning/jobs/{job_id}"): ({}, None),
    ("post", "/v1/fine_tuning/jobs/{job_id}/start"): ({}, None),
    ("post", "/v1/fine_tuning/jobs/{job_id}/cancel"): ({}, None),
    ("get", "/v1/fine_tuning/jobs/{job_id}/events"): ({}, None),
    ("get", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): ({}, None),
    ("get", "/v1/batch/jobs/{job_id}"): ({}, None),
    ("delete", "/v1/batch/jobs/{job_id}"): ({}, None),
    ("post", "/v1/batch/jobs/{job_id}/cancel"): ({}, None),
    ("get", "/v1/batches/{batch_id}"): ({}, None),
    ("post", "/v1/batches/{batch_id}/cancel"): ({}, None),
    ("get", "/v1/deployments/{name}"): ({}, None),
    ("delete", "/v1/deployments/{name}"): ({}, None),
    ("post", "/v1/deployments/{name}/scale"): ({}, {"replicas": 0}),
    ("get", "/v1/deployments/{name}/logs"): ({}, None),
    ("get", "/v1/deployments/{name}/metrics"): ({}, None),
    ("get", "/v1/deployments/{name}/domains"): ({}, None),
    ("post", "/v1/deployments/{name}/domains"): ({}, {"domain": "stolen.example.test"}),
    ("delete", "/v1/deployments/{name}/domains/{domain}"): ({}, None),
    ("put", "/v1/deployments/{name}"): ({}, {"name": "owned-web", "command": "sleep 1"}),
    ("patch", "/v1/deployments/{name}"): ({}, {"command": "sleep 1"}),
    ("get", "/v1/deployments/{name}/revisions"): ({}, None),
    ("post", "/v1/deployments/{name}/rollback"): ({}, {"revision": 1}),
    ("get", "/v1/deployments/{name}/events"): ({}, None),
    ("put", "/v1/secrets/{secret_name}"): ({}, {"value": "taken over"}),
    ("delete", "/v1/secrets/{secret_name}"): ({}, None),
    ("get", "/v1/request_logs/{request_id}"): ({}, None),
    ("get", "/v1/responses/{response_id}"): ({}, None),
    ("delete", "/v1/responses/{response_id}"): ({}, None),
    ("post", "/v1/responses/{response_id}/cancel"): ({}, None),
    ("get", "/v1/responses/{response_id}/input_items"): ({}, None),
    ("get", "/v1/evaluations/{evaluation_id}"): ({}, None),
    ("post", "/v1/evaluations/{evaluation_id}/cancel"): ({}, None),
    ("get", "/v1/evaluations/{evaluation_id}/results"): ({"format": "csv"}, None),
    ("get", "/v1/evaluations/{evaluation_id}/chart"): ({}, None),
    ("get", "/v1/evaluations/{evaluation_id}/comparison"): (
        {"baseline": DEFAULT_CHAT_MODEL_NAME, "candidate": DEFAULT_CHAT_MODEL_NAME, "metric": "exact_match"},
        None,
    ),
}


def object_routes(http: httpx.Client) -> set[tuple[str, str]]:
    """(method, path) of every /v1 route with a path parameter, admin API aside
    (its own tests cover organisations' boundaries)."""
    paths = http.get("/openapi.json").json()["paths"]
    return {
        (method, path)
        for path, operations in paths.items()
        if "{" in path and path.startswith("/v1/") and not path.startswith("/v1/admin/")
        for method in operations
    }


@pytest.fixture(scope="module")
def owners_objects(live_server) -> dict:
    """One object of each kind in the owner's workspace, by path parameter name."""
    owner = live_server.create_tenant("sweep-owner", ALL)
    ids: dict = {"model_id": "no-such-model", "version": "0", "pid": "1", "port": "8000", "path": "x", "_owner": owner}
    with live_server.admin() as admin:
        opted_in = admin.patch(f"/workspaces/{owner.workspace_id}", json={"request_log_retention_days": 1})
        assert opted_in.status_code == 200, opted_in.text
    with httpx.Client(base_url=live_server.url, headers=owner.headers, timeout=120) as http:
        chat = {"model": DEFAULT_CHAT_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        completion = http.post("/v1/chat/completions", json=chat)
        assert completion.status_code == 200, completion.text
        ids["request_id"] = completion.headers["x-request-id"]
        # Stored after the response was sent, by a background writer.
        deadline = time.monotonic() + 30
        while http.get(f"/v1/request_logs/{ids['request_id']}").status_code != 200:
            assert time.monotonic() < deadline, "the owner's request was never stored"
            time.sleep(0.05)
        response = http.post(
            "/v1/responses", json={"model": DEFAULT_CHAT_MODEL_NAME, "input": "Hi", "max_output_tokens": 1}
        )
        assert response.status_code == 200, response.text
        ids["response_id"] = response.json()["id"]
        agent = http.post("/v1/agents", json={"model": DEFAULT_CHAT_MODEL_NAME, "name": "owned"})
        assert agent.status_code == 200, agent.text
        ids["agent_id"] = agent.json()["id"]
        http.patch(f"/v1/agents/{ids['agent_id']}", json={"description": "second version"}).raise_for_status()
        alias = http.put(f"/v1/agents/{ids['agent_id']}/aliases", params={"alias": "stable", "version": 1})
        assert alias.status_code == 200, alias.text
        conversation = http.post(
            "/v1/conversations",
            json={"agent_id": ids["agent_id"], "inputs": "Hi", "completion_args": {"max_tokens": 2}},
        )
        assert conversation.status_code == 200, conversation.text
        ids["conversation_id"] = conversation.json()["conversation_id"]
        ids["entry_id"] = http.get(f"/v1/conversations/{ids['conversation_id']}/history").json()["entries"][0]["id"]
        library = http.post("/v1/libraries", json={"name": "owned"})
        assert library.status_code in (200, 201), library.text
        ids["library_id"] = library.json()["id"]
        document = http.post(
            f"/v1/libraries/{ids['library_id']}/documents",
            files={"file": ("notes.md", io.BytesIO(b"# Owner\nThe vault code is 0451."), "text/markdown")},
        )
        assert document.status_code in (200, 201), document.text
        ids["document_id"] = document.json()["id"]
        training = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
        file = http.post("/v1/files", files={"file": ("train.jsonl", training)}, data={"purpose": "fine-tune"})
        assert file.status_code == 200, file.text
        ids["file_id"] = file.json()["id"]
        job = http.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": DEFAULT_CHAT_MODEL_NAME,
                "training_files": [{"file_id": ids["file_id"]}],
                "auto_start": False,
            },
        )
        assert job.status_code == 200, job.text
        ids["job_id"] = job.json()["id"]
        evaluation = http.post(
            "/v1/evaluations",
            json={
                "dataset": ids["file_id"],
                "targets": [{"model": DEFAULT_CHAT_MODEL_NAME}],
                "metrics": [{"type": "exact_match"}],
                "completion_args": {"max_tokens": 1},
            },
        )
        assert evaluation.status_code == 200, evaluation.text
        ids["evaluation_id"] = evaluation.json()["id"]
        request = b'{"custom_id": "a", "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}}\n'
        batch_file = http.post("/v1/files", files={"file": ("in.jsonl", request)}, data={"purpose": "batch"})
        assert batch_file.status_code == 200, batch_file.text
        batch = http.post(
            "/v1/batch/jobs",
            json={
                "input_files": [batch_file.json()["id"]],
                "endpoint": "/v1/chat/completions",
                "model": DEFAULT_CHAT_MODEL_NAME,
            },
        )
        assert batch.status_code == 200, batch.text
        ids["batch_job_id"] = batch.json()["id"]
        ids["batch_id"] = ids["batch_job_id"]  # /v1/batches shows the same jobs
        deployment = {"name": "owned-web", "command": "python3 -m http.server $PORT"}
        created = http.post("/v1/deployments", json=deployment)
        assert created.status_code in (200, 201), created.text
        ids["name"] = "owned-web"
        domain = http.post("/v1/deployments/owned-web/domains", json={"domain": "owned.example.test"})
        assert domain.status_code == 201, domain.text
        ids["domain"] = "owned.example.test"
        secret = http.post("/v1/secrets", json={"name": "owned-secret", "value": "the owner's"})
        assert secret.status_code == 201, secret.text
        ids["secret_name"] = "owned-secret"
        if shutil.which("bwrap") is not None:
            sandbox = http.post("/v1/sandboxes", json={"timeout": 120})
            assert sandbox.status_code == 201, sandbox.text
            ids["sandbox_id"] = sandbox.json()["sandbox_id"]
            written = http.put(
                f"/v1/sandboxes/{ids['sandbox_id']}/files", params={"path": "/home/user/secret.txt"}, content=b"mine"
            )
            assert written.status_code < 300, written.text
    ids["template"] = plant_template(live_server.tenancy.home / "templates", owner.workspace_id)
    return ids


def plant_template(store: Path, workspace_id: str) -> str:
    """A template of the owner's, as its build leaves it on disk (a real build
    takes minutes; tests/sandbox/test_templates.py builds one)."""
    template_id = "0" * 31 + "1"
    (store / template_id / "rootfs").mkdir(parents=True)
    meta = {"name": "owned", "owner": workspace_id, "env": {}, "start": None, "apt": [], "pip": [], "size_bytes": 0}
    (store / template_id / "template.json").write_text(json.dumps({**meta, "created_at": time.time()}))
    return template_id


def fill(template: str, ids: dict) -> str:
    # Fine-tuning and batch jobs both name theirs {job_id}.
    ids = {**ids, "job_id": ids["batch_job_id"]} if template.startswith("/v1/batch/") else ids
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)


def test_every_object_route_is_listed(live_server):
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        missing = object_routes(http) - set(REQUESTS)
    assert not missing, f"routes without an isolation check: {sorted(missing)}"


def test_another_workspace_gets_404_on_every_object_route(live_server, owners_objects):
    stranger = live_server.create_tenant("sweep-stranger", ALL)
    with httpx.Client(base_url=live_server.url, headers=stranger.headers, timeout=60) as http:
        routes = object_routes(http)
        leaks, tried = [], 0
        for method, template in sorted(routes):
            names = set(re.findall(r"\{(\w+)\}", template))
            if not names <= owners_objects.keys():
                continue  # e.g. no sandboxes on a machine without bubblewrap
            query, body = REQUESTS[(method, template)]
            kwargs: dict = {"params": query}
            if body == "multipart":
                kwargs["files"] = {"file": ("x.txt", io.BytesIO(b"intruder"), "text/plain")}
            elif isinstance(body, bytes):
                kwargs["content"] = body
            elif body is not None:
                kwargs["json"] = {k: fill(v, owners_objects) if isinstance(v, str) else v for k, v in body.items()}
            response = http.request(method.upper(), fill(template, owners_objects), **kwargs)
            tried += 1
            if response.status_code != 404:
                leaks.append(f"{method.upper()} {template}: {response.status_code} {response.text[:120]}")
    assert not leaks, "\n".join(leaks)
    without_sandboxes = {route for route in routes if "{sandbox_id}" not in route[1]}
    assert tried >= (len(routes) if "sandbox_id" in owners_objects else len(without_sandboxes))


def test_another_workspace_cannot_open_a_sandbox_websocket(live_server, owners_objects):
    """WebSocket routes are not in the OpenAPI document: the terminal's and a port's are tried here."""
    if "sandbox_id" not in owners_objects:
        pytest.skip("no sandboxes on this host")
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    stranger = live_server.create_tenant("sweep-ws-stranger", ALL)
    base = live_server.url.replace("http://", "ws://") + f"/v1/sandboxes/{owners_objects['sandbox_id']}"
    for url in (f"{base}/pty/ws", f"{base}/ports/8000/socket"):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=stranger.headers, open_timeout=30)
        assert refused.value.response.status_code == 404, url
        with pytest.raises(InvalidStatus) as anonymous:
            connect(url, open_timeout=30)
        assert anonymous.value.response.status_code == 401, url


def test_another_workspaces_port_link_never_opens_the_owners_sandbox(live_server, owners_objects):
    """A link signed for a stranger's own sandbox, pointed at the owner's (in the
    query, as the cookie, over HTTP and WebSocket): refused, never proxied."""
    if "sandbox_id" not in owners_objects:
        pytest.skip("no sandboxes on this host")
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    stranger = live_server.create_tenant("sweep-link-stranger", ALL)
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        theirs = http.post("/v1/sandboxes", json={"timeout": 60}, headers=stranger.headers).json()["sandbox_id"]
        try:
            link = http.post(f"/v1/sandboxes/{theirs}/port-links/8000", headers=stranger.headers)
            assert link.status_code == 201, link.text
            token = link.json()["path_url"].split("?token=")[1]
            target = f"/v1/sandboxes/{owners_objects['sandbox_id']}/ports/8000/"
            assert http.get(target, params={"token": token}).status_code == 401
            assert http.get(target, headers={"Cookie": f"tramontane_port_link={token}"}).status_code == 401
            ws_url = live_server.url.replace("http://", "ws://") + target + f"?token={token}"
            with pytest.raises(InvalidStatus) as refused:
                connect(ws_url, open_timeout=30)
            assert refused.value.response.status_code == 401
        finally:
            http.delete(f"/v1/sandboxes/{theirs}", headers=stranger.headers)


def test_another_workspace_cannot_reach_a_deployment_by_its_domain(live_server, owners_objects):
    """Custom domains route by Host header in front of every route: only the
    owning workspace's keys reach the deployment through one."""
    stranger = live_server.create_tenant("sweep-domain-stranger", ALL)
    host = {"host": owners_objects["domain"]}
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        refused = http.get("/", headers={**stranger.headers, **host})
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "deployment_not_found"
        assert http.get("/v1/models", headers={**stranger.headers, **host}).status_code == 404
        owner = owners_objects["_owner"]
        served = http.get("/", headers={**owner.headers, **host})
        assert served.status_code == 200 and "Directory listing" in served.text


def test_the_owners_objects_survived_the_attempts(live_server, owners_objects):
    owner = owners_objects["_owner"]
    with httpx.Client(base_url=live_server.url, headers=owner.headers, timeout=60) as http:
        agent = http.get(f"/v1/agents/{owners_objects['agent_id']}")
        assert agent.status_code == 200 and agent.json().get("description") != "taken over"
        aliases = http.get(f"/v1/agents/{owners_objects['agent_id']}/aliases").json()
        assert [(a["alias"], a["version"]) for a in aliases] == [("stable", 1)]
        history = http.get(f"/v1/conversations/{owners_objects['conversation_id']}/history").json()["entries"]
        assert not any("hello" == entry.get("content") for entry in history)
        library = owners_objects["library_id"]
        assert http.get(f"/v1/libraries/{library}/documents/{owners_objects['document_id']}").status_code == 200
        assert http.get(f"/v1/deployments/{owners_objects['name']}").status_code == 200
        domains = http.get(f"/v1/deployments/{owners_objects['name']}/domains").json()["data"]
        assert [d["domain"] for d in domains] == [owners_objects["domain"]]
        deployment = http.get(f"/v1/deployments/{owners_objects['name']}")
        assert deployment.status_code == 200 and deployment.json()["revision"] == 1
        assert [r["number"] for r in http.get(f"/v1/deployments/{owners_objects['name']}/revisions").json()["data"]] == [1]
        assert [s["name"] for s in http.get("/v1/secrets").json()["data"]] == [owners_objects["secret_name"]]
        assert http.get(f"/v1/files/{owners_objects['file_id']}/content").content.startswith(b'{"messages"')
        assert http.get(f"/v1/fine_tuning/jobs/{owners_objects['job_id']}").json()["status"] != "CANCELLED"
        batch = http.get(f"/v1/batches/{owners_objects['batch_id']}")
        assert batch.status_code == 200 and batch.json()["status"] not in ("cancelling", "cancelled")
        assert http.get(f"/v1/request_logs/{owners_objects['request_id']}").status_code == 200
        kept = http.get(f"/v1/responses/{owners_objects['response_id']}")
        assert kept.status_code == 200 and kept.json()["status"] in ("completed", "incomplete")
        if "sandbox_id" in owners_objects:
            content = http.get(
                f"/v1/sandboxes/{owners_objects['sandbox_id']}/files", params={"path": "/home/user/secret.txt"}
            )
            assert content.status_code == 200 and content.content == b"mine"
            http.delete(f"/v1/sandboxes/{owners_objects['sandbox_id']}")
