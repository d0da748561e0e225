"""Usage metering and energy: totals equal the per-request records."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tenancy_helpers import add_key, make_tenant

from tramontane.errors import Limited
from tramontane.store import RateCounter
from tramontane.tenancy import CLI, EnergyMeter, EnergyReading, Limits, Tenancy
from tramontane.tenancy import usage as usage_reports
from tramontane.tenancy.energy import EstimateCounter, NvmlCounter, RaplCounter
from tramontane.tenancy.limits import TOKENS_PER_MONTH


def test_report_totals_equal_the_sum_of_requests(client: TestClient, tenancy: Tenancy) -> None:
    alice = make_tenant(tenancy, "alice")
    alice2 = add_key(tenancy, alice)
    bob = make_tenant(tenancy, "bob")
    sent = [
        (alice, "small", 10, 5),
        (alice, "large", 7, 1),
        (alice2, "small", 3, 30),
        (bob, "small", 100, 200),
    ]
    for tenant, model, prompt, completion in sent:
        body = {"model": model, "prompt_tokens": prompt, "completion_tokens": completion}
        assert client.post("/v1/generate", json=body, headers=tenant.headers).status_code == 200

    by_model = usage_reports.report(tenancy.store, group_by=["model"], workspace_id=alice.workspace_id)
    assert [(r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in by_model] == [
        ("large", 1, 7, 1),
        ("small", 2, 13, 35),
    ]
    by_key = {r["key"]: r["total_tokens"] for r in usage_reports.report(tenancy.store, group_by=["key"])}
    assert by_key == {alice.key_id: 23, alice2.key_id: 33, bob.key_id: 300}
    everything = usage_reports.report(tenancy.store, group_by=["workspace", "day"])
    assert sum(r["total_tokens"] for r in everything) == sum(p + c for _, _, p, c in sent)
    assert sum(r["requests"] for r in everything) == len(sent)
    assert all(r["energy_wh"] > 0 for r in everything)
    by_org = usage_reports.report(tenancy.store, group_by=["workspace"], organisation_id=bob.organisation_id)
    assert [r["workspace"] for r in by_org] == [bob.workspace_id]


def test_records_carry_latency_and_an_estimate_label(tenancy: Tenancy) -> None:
    now = [0.0]
    tenancy.meter = EnergyMeter([EstimateCounter(watts=90.0, clock=lambda: now[0])])
    tenant = make_tenant(tenancy, "a")
    admitted = tenancy.admit(tenancy.authenticate(f"Bearer {tenant.key}"))
    now[0] = 120.0
    usage = tenancy.record_usage(admitted, model="m", prompt_tokens=1, completion_tokens=1, request_id="r1")
    # 90 W for two minutes: 3 Wh.
    assert (usage.energy_wh, usage.energy_source) == (3.0, "estimate")
    assert usage.latency_ms > 0
    with pytest.raises(RuntimeError):
        tenancy.record_usage(admitted, model="m", prompt_tokens=1, completion_tokens=1)
    tenancy.finish(admitted)


def test_queued_usage_is_written_in_batches_and_counts_toward_limits(tenancy: Tenancy) -> None:
    kept, erased = make_tenant(tenancy, "kept"), make_tenant(tenancy, "erased")
    # Requests of a workspace erased before their usage is written: it must not come back.
    orphans = [tenancy.admit(tenancy.authenticate(f"Bearer {erased.key}")) for _ in range(3)]
    tenancy.erase_workspace(erased.workspace_id, CLI)
    for i in range(40):
        admitted = tenancy.admit(tenancy.authenticate(f"Bearer {kept.key}"))
        tenancy.submit_usage(admitted, model="m", prompt_tokens=2, completion_tokens=3, request_id=f"r{i}")
        tenancy.finish(admitted)
        if i % 15 == 0:  # among the others, so that they share batches
            orphan = orphans.pop()
            tenancy.submit_usage(orphan, model="m", prompt_tokens=1, completion_tokens=1, request_id=f"o{i}")
            tenancy.finish(orphan)
    tenancy.usage_writer.flush()
    rows = usage_reports.report(tenancy.store, group_by=["workspace"])
    assert [(r["workspace"], r["requests"], r["total_tokens"]) for r in rows] == [(kept.workspace_id, 40, 200)]
    assert tenancy.usage_writer.dropped == 3
    # A batch adds its requests' tokens up: one counter row per key or workspace and window.
    with tenancy.store.read() as connection:
        monthly = connection.execute(
            select(RateCounter.subject, RateCounter.value).where(RateCounter.metric == TOKENS_PER_MONTH)
        ).all()
    assert sorted(monthly) == [(f"key:{kept.key_id}", 200), (f"workspace:{kept.workspace_id}", 200)]

    # Once written, the tokens count toward the key's limits, as `record_usage`'s do.
    limited = make_tenant(tenancy, "limited", key_limits=Limits(tokens_per_minute=5))
    admitted = tenancy.admit(tenancy.authenticate(f"Bearer {limited.key}"))
    tenancy.submit_usage(admitted, model="m", prompt_tokens=2, completion_tokens=3, request_id="r")
    tenancy.finish(admitted)
    tenancy.usage_writer.flush()
    with pytest.raises(Limited):
        tenancy.admit(tenancy.authenticate(f"Bearer {limited.key}"))


def test_usage_outside_a_request_needs_latency_and_energy(tenancy: Tenancy) -> None:
    principal = tenancy.authenticate(f"Bearer {make_tenant(tenancy, 'a').key}")
    with pytest.raises(ValueError):
        tenancy.record_usage(principal, model="m", prompt_tokens=1, completion_tokens=1)
    usage = tenancy.record_usage(
        principal, model="m", prompt_tokens=1, completion_tokens=1, latency_s=0.5, energy=EnergyReading(0.25, "nvml")
    )
    assert (usage.latency_ms, usage.energy_wh, usage.energy_source) == (500.0, 0.25, "nvml")


class FakeCounter:
    name = "fake"

    def __init__(self) -> None:
        self.joules = 0.0

    def read_joules(self) -> float:
        return self.joules


def test_energy_is_split_by_tokens_among_concurrent_requests() -> None:
    counter = FakeCounter()
    meter = EnergyMeter([counter])
    a = meter.begin()
    counter.joules = 3600.0  # a alone: all 1 Wh is a's
    b = meter.begin(weight_tokens=3)
    counter.joules = 7200.0  # a (1 token so far) and b (3): 1:3
    reading_b = meter.finish(b, tokens=3)
    counter.joules = 9000.0  # a alone again
    reading_a = meter.finish(a, tokens=1)
    assert reading_b == EnergyReading(wh=0.75, source="fake")
    assert reading_a.wh == pytest.approx(1 + 0.25 + 0.5)
    counter.joules = 99999.0  # idle energy is charged to no one
    assert meter.finish(meter.begin()).wh == 0


def test_progress_reweights_a_running_request() -> None:
    counter = FakeCounter()
    meter = EnergyMeter([counter])
    a, b = meter.begin(), meter.begin()
    counter.joules = 3600.0  # 1:1 so far
    meter.progress(a, 3)
    counter.joules = 7200.0  # now 3:1
    assert meter.finish(a).wh == pytest.approx(0.5 + 0.75)
    assert meter.finish(b).wh == pytest.approx(0.5 + 0.25)


def _zone(root: Path, name: str, energy: int, max_range: int = 1000) -> Path:
    zone = root / name
    zone.mkdir()
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def test_rapl_reads_package_zones_and_handles_wraparound(tmp_path: Path) -> None:
    package = _zone(tmp_path, "intel-rapl:0", 900)
    _zone(tmp_path, "intel-rapl:0:0", 5)  # a sub-zone, already part of the package
    counter = RaplCounter.open(tmp_path)
    assert counter is not None
    (package / "energy_uj").write_text("100\n")  # wrapped: 900 -> 1000 -> 100
    assert counter.read_joules() == pytest.approx(200 / 1e6)
    assert RaplCounter.open(tmp_path / "missing") is None


def test_nvml_sums_gpu_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = {0: 1000, 1: 5000}

    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=lambda h: readings[h],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    counter = NvmlCounter.open()
    assert counter is not None
    readings[0] += 1500  # millijoules
    assert counter.read_joules() == pytest.approx(1.5)
