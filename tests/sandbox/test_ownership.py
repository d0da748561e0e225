"""Sandboxes belong to the tenant that created them; others see nothing."""


def test_other_tenants_get_404_everywhere(live):
    with live.http() as http:
        created = http.post("/v1/sandboxes", json={}, headers={"x-tenant": "alice"})
        assert created.status_code == 201
        sid = created.json()["sandbox_id"]
        try:
            bob = {"x-tenant": "bob"}
            for method, path, kwargs in [
                ("GET", f"/v1/sandboxes/{sid}", {}),
                ("POST", f"/v1/sandboxes/{sid}/commands", {"json": {"cmd": "echo hi", "stream": False}}),
                ("GET", f"/v1/sandboxes/{sid}/files", {"params": {"path": "/etc/hostname"}}),
                ("POST", f"/v1/sandboxes/{sid}/code", {"json": {"code": "1+1"}}),
                ("POST", f"/v1/sandboxes/{sid}/timeout", {"json": {"timeout": 60}}),
                ("DELETE", f"/v1/sandboxes/{sid}", {}),
            ]:
                response = http.request(method, path, headers=bob, **kwargs)
                assert response.status_code == 404, (method, path, response.text)
            listed = http.get("/v1/sandboxes", headers=bob).json()
            assert all(s["sandbox_id"] != sid for s in listed["sandboxes"])
            assert http.get(f"/v1/sandboxes/{sid}", headers={"x-tenant": "alice"}).status_code == 200
        finally:
            assert http.delete(f"/v1/sandboxes/{sid}", headers={"x-tenant": "alice"}).status_code == 204
