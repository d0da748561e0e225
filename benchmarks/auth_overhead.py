"""What tenancy costs per request: authentication, then the limit checks.

Each case is timed over `--requests` iterations after a warm-up:
- auth: `authenticate` alone (one indexed read and an HMAC);
- auth + rpm: `authenticate`, `admit`, `finish` for a key whose workspace has a
  requests/min limit (one write transaction, one atomic upsert);
- auth + rpm + concurrency: the workspace also limits concurrent requests
  (admission also counts and adds a lease; `finish` deletes it: a second
  write transaction);
- auth + rpm + concurrency + usage: the same plus `record_usage` (the usage row
  and the token counters): everything tenancy adds to one metered request.

    python benchmarks/auth_overhead.py [--requests 2000] [--database-url URL]

The default is a fresh SQLite file in a temporary directory; pass a
postgresql+psycopg:// URL to measure PostgreSQL. Prints p50 and p99 in ms.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tramontane.store import open_store
from tramontane.tenancy import CLI, Capability, Limits, Tenancy, directory, keys


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(step: Callable[[], None], requests: int) -> list[float]:
    for _ in range(min(200, requests)):
        step()
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        step()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def _key(tenancy: Tenancy, name: str, limits: Limits) -> str:
    """An Authorization header for a key in a new workspace with `limits`."""
    with tenancy.store.session() as session:
        organisation = directory.create_organisation(session, f"bench-{name}-{time.time_ns()}", CLI)
        workspace = directory.create_workspace(session, organisation, "bench", CLI, limits)
        created = keys.create_key(
            session, tenancy.pepper, workspace, name="bench", capabilities=frozenset(Capability), actor=CLI
        )
    return f"Bearer {created.plaintext}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        url = args.database_url or f"sqlite:///{Path(home) / 'bench.db'}"
        tenancy = Tenancy(open_store(url), home=Path(home))
        # Limits high enough never to refuse: the benchmark measures the checks.
        rpm_only = Limits(requests_per_minute=10**9)
        with_concurrency = Limits(requests_per_minute=10**9, max_concurrent_requests=10**6)
        rpm_header = _key(tenancy, "rpm", rpm_only)
        full_header = _key(tenancy, "full", with_concurrency)

        def auth() -> None:
            tenancy.authenticate(full_header)

        def auth_rpm() -> None:
            tenancy.finish(tenancy.admit(tenancy.authenticate(rpm_header)))

        def auth_limits() -> None:
            tenancy.finish(tenancy.admit(tenancy.authenticate(full_header)))

        def auth_limits_usage() -> None:
            admitted = tenancy.admit(tenancy.authenticate(full_header))
            tenancy.record_usage(admitted, model="bench", prompt_tokens=10, completion_tokens=20)
            tenancy.finish(admitted)

        print(f"database: {tenancy.store.dialect}, {args.requests} requests per case")
        cases = (
            ("auth", auth),
            ("auth + rpm", auth_rpm),
            ("auth + rpm + concurrency", auth_limits),
            ("... + usage", auth_limits_usage),
        )
        for name, step in cases:
            timings = measure(step, args.requests)
            print(f"{name:<26} p50 {percentile(timings, 50):7.3f} ms   p99 {percentile(timings, 99):7.3f} ms")
        tenancy.close()


if __name__ == "__main__":
    main()
