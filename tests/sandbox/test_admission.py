"""Host-memory admission: the memory limits of all sandboxes together stay within
the host's memory times the operator's overcommit ratio."""

from __future__ import annotations

import httpx
from conftest import _serve

from tramontane.sandbox import Limits, ManagerConfig, SandboxManager


def test_a_sandbox_the_host_cannot_hold_is_refused_with_retry_after(tier1_host: None) -> None:
    config = ManagerConfig(
        pool_size=1,  # a pooled sandbox counts too, and makes way for one asked for
        microvm_pool_size=0,
        default_limits=Limits(memory_mb=256),
        host_memory_mb=512,
        memory_overcommit=1.5,  # 768 MiB: three of 256
    )
    with _serve(SandboxManager(config)) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        created = [http.post("/v1/sandboxes", json={"timeout": 30}) for _ in range(3)]
        assert [r.status_code for r in created] == [201, 201, 201], created[-1].text
        refused = http.post("/v1/sandboxes", json={"timeout": 30})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "host_memory_exhausted"
        assert 1 <= int(refused.headers["Retry-After"]) <= 30
        bigger = http.post("/v1/sandboxes", json={"memory_mb": 1024})
        assert bigger.status_code == 503
        assert live.manager.stats()["committed_memory_mb"] == 768
        assert http.delete(f"/v1/sandboxes/{created[0].json()['sandbox_id']}").status_code == 204
        assert http.post("/v1/sandboxes", json={"timeout": 30}).status_code == 201
