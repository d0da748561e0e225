"""A second server process for test_limits_processes: admits requests for one key
against a shared database and prints how many got through."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tramontane.store import open_store
from tramontane.errors import Limited
from tramontane.tenancy import Tenancy


def main(url: str, home: str, key: str, attempts: int, clock: float, hold: bool) -> None:
    tenancy = Tenancy(open_store(url, migrate=False), home=Path(home), pepper=b"test-pepper-0123456789abcdef")
    # Every process uses the same frozen clock, so no window can roll over mid-test.
    tenancy.limiter.clock = lambda: clock
    principal = tenancy.authenticate(f"Bearer {key}")
    # Start together with the other process: report ready, wait for the go.
    print("ready", flush=True)
    sys.stdin.readline()
    admitted = refused = 0
    for _ in range(attempts):
        try:
            ticket = tenancy.admit(principal)
        except Limited:
            refused += 1
            continue
        admitted += 1
        if not hold:
            tenancy.finish(ticket)
    print(json.dumps({"admitted": admitted, "refused": refused}))


if __name__ == "__main__":
    url, home, key, attempts, clock, hold = sys.argv[1:]
    main(url, home, key, int(attempts), float(clock), hold == "hold")
