"""What storing request logs costs, beside its peer: writing each one inline.

- queued: what a request pays when its workspace stores bodies: `submit` puts
  the entry on the background writer's queue;
- inline (peer): one INSERT transaction per request, what the request would
  wait for had the write been on its path;
- throughput: entries per second the writer stores (batched inserts) against
  inline inserts one by one.

    python benchmarks/request_logs.py [--requests 2000] [--database-url URL]

Entries carry a ~1 KB chat request and response. The default database is a fresh
SQLite file in a temporary directory. Prints p50 and p99 in ms.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from tramontane.store import RequestLog, open_store
from tramontane.store.types import utcnow
from tramontane.tenancy import Capability, RequestLogEntry, RequestLogWriter, Tenancy


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        url = args.database_url or f"sqlite:///{Path(home) / 'bench.db'}"
        tenancy = Tenancy(open_store(url), home=Path(home))
        workspace_id, key = tenancy.create_tenant(f"bench-{time.time_ns()}", frozenset({Capability.INFERENCE}))
        key_id = tenancy.authenticate(f"Bearer {key}").key_id
        text = "Tramontane " * 45  # ~500 characters each way

        def entry(i: int) -> RequestLogEntry:
            now = utcnow()
            return RequestLogEntry(
                workspace_id=workspace_id,
                api_key_id=key_id,
                request_id=f"bench-{i}",
                endpoint="/v1/chat/completions",
                model="bench",
                created_at=now,
                completed_at=now,
                retention_days=30,
                request={"model": "bench", "messages": [{"role": "user", "content": text}]},
                response={"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]},
            )

        writer = RequestLogWriter(tenancy.store, capacity=args.requests + 1, purge_interval_s=3600)
        writer.start()
        writer.flush()
        queued = []
        started = time.perf_counter()
        for i in range(args.requests):
            built = entry(i)
            before = time.perf_counter()
            writer.submit(built)
            queued.append((time.perf_counter() - before) * 1000)
        writer.flush()
        writer_rate = args.requests / (time.perf_counter() - started)
        writer.close()

        inline = []
        for i in range(args.requests):
            row = entry(i).row()
            before = time.perf_counter()
            with tenancy.store.write() as connection:
                connection.execute(insert(RequestLog), row)
            inline.append((time.perf_counter() - before) * 1000)
        inline_rate = 1000 / (sum(inline) / len(inline))

        print(f"database: {tenancy.store.dialect}, {args.requests} entries per case, dropped: {writer.dropped}")
        for name, timings in (("queued (request path)", queued), ("inline insert (peer)", inline)):
            print(f"{name:<24} p50 {percentile(timings, 50):7.3f} ms   p99 {percentile(timings, 99):7.3f} ms")
        print(f"throughput: writer {writer_rate:,.0f} entries/s, inline {inline_rate:,.0f} entries/s")
        tenancy.close()


if __name__ == "__main__":
    main()
