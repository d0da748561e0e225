"""Limits hold across two server processes sharing one PostgreSQL database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tenancy_helpers import Tenant, add_key, make_tenant

from tramontane.store import open_store
from tramontane.tenancy import Limits, Tenancy

WORKER = Path(__file__).with_name("limit_worker.py")
CLOCK = 1_800_000_010.0


@pytest.fixture
def shared(postgres_url: str, tmp_path: Path) -> Tenancy:
    return Tenancy(open_store(postgres_url), home=tmp_path, pepper=b"test-pepper-0123456789abcdef")


def _race(tenancy: Tenancy, keys: list[Tenant], attempts: int, *, hold: bool = False) -> list[dict[str, int]]:
    """Runs one worker process per key, all let loose at the same instant."""
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                tenancy.store.url,
                str(tenancy.home),
                tenant.key,
                str(attempts),
                str(CLOCK),
                "hold" if hold else "release",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for tenant in keys
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    return [json.loads(output) for output in outputs]


def test_key_rate_limit_across_two_processes(shared: Tenancy) -> None:
    tenant = make_tenant(shared, "a", key_limits=Limits(requests_per_minute=50))
    results = _race(shared, [tenant, tenant], attempts=40)
    assert sum(r["admitted"] for r in results) == 50
    assert sum(r["refused"] for r in results) == 30


def test_workspace_rate_limit_across_two_processes_and_keys(shared: Tenancy) -> None:
    first = make_tenant(shared, "a", workspace_limits=Limits(requests_per_minute=30))
    second = add_key(shared, first)
    results = _race(shared, [first, second], attempts=25)
    assert sum(r["admitted"] for r in results) == 30


def test_concurrency_limit_across_two_processes(shared: Tenancy) -> None:
    tenant = make_tenant(shared, "a", key_limits=Limits(max_concurrent_requests=7))
    results = _race(shared, [tenant, tenant], attempts=10, hold=True)
    assert sum(r["admitted"] for r in results) == 7
