"""The sandbox and deployment APIs behind the same keys as inference: each needs its
own capability, and a workspace never sees another's objects."""

import shutil

import httpx
import pytest


def test_capabilities_gate_each_api(live_server):
    inference_only = live_server.tenant
    with httpx.Client(base_url=live_server.url, headers=inference_only.headers, timeout=30) as http:
        assert http.get("/v1/sandboxes").status_code == 403
        assert http.get("/v1/deployments").status_code == 403
        assert http.get("/v1/sandboxes", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_deployments_api_is_served(live_server):
    deployer = live_server.create_tenant("deployer", ("deploy",))
    with httpx.Client(base_url=live_server.url, headers=deployer.headers, timeout=30) as http:
        response = http.get("/v1/deployments")
    assert response.status_code == 200


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_sandboxes_belong_to_their_workspace(live_server):
    alice = live_server.create_tenant("alice", ("sandbox",))
    bob = live_server.create_tenant("bob", ("sandbox",))
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        created = http.post("/v1/sandboxes", json={"timeout": 60}, headers=alice.headers)
        assert created.status_code == 201, created.text
        sid = created.json()["sandbox_id"]
        try:
            run = http.post(
                f"/v1/sandboxes/{sid}/commands", json={"cmd": "echo hi", "stream": False}, headers=alice.headers
            )
            assert run.status_code == 200 and run.json()["stdout"] == "hi\n"
            assert http.get(f"/v1/sandboxes/{sid}", headers=bob.headers).status_code == 404
            assert sid not in [
                s["sandbox_id"] for s in http.get("/v1/sandboxes", headers=bob.headers).json()["sandboxes"]
            ]
        finally:
            assert http.delete(f"/v1/sandboxes/{sid}", headers=alice.headers).status_code == 204


def test_sandbox_egress_to_private_addresses_needs_the_operators_consent(live_server):
    # The platform's default: no tenant may aim a sandbox at the host's loopback
    # services (its database, this API), the metadata address or private networks.
    tenant = live_server.create_tenant("egress-default", ("sandbox",))
    with httpx.Client(base_url=live_server.url, headers=tenant.headers, timeout=30) as http:
        for target in ("127.0.0.1:5432", "169.254.169.254:80", "10.0.0.1:443", "[::1]:8000"):
            answer = http.post("/v1/sandboxes", json={"network": {"allow_out": [target]}})
            assert answer.status_code == 400, (target, answer.text)  # a domain Invalid
            assert answer.json()["error"]["code"] == "egress_private_not_allowed"
