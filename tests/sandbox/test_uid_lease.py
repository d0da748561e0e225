"""Host uid ranges: each sandbox manager on a host leases its own, until it stops
or its process ends."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tramontane.sandbox import ManagerConfig, SandboxManager
from tramontane.sandbox.errors import Unavailable
from tramontane.sandbox.uid_lease import RANGE_SIZE, claim_uid_range

BASE = 1_500_000_000


def test_ranges_are_exclusive_until_released(tmp_path: Path) -> None:
    first, second = claim_uid_range(tmp_path, BASE), claim_uid_range(tmp_path, BASE)
    assert (first.first, second.first) == (BASE, BASE + RANGE_SIZE)
    assert not any(uid in second for uid in (first.first, first.first + RANGE_SIZE - 1))
    first.release()
    again = claim_uid_range(tmp_path, BASE)
    assert again.first == BASE
    with pytest.raises(Unavailable, match="held"):
        claim_uid_range(tmp_path, BASE, max_ranges=2)
    again.release()
    second.release()


HOLDER = textwrap.dedent(
    """
    import os, sys
    from tramontane.sandbox.uid_lease import claim_uid_range
    leased = claim_uid_range(sys.argv[1], int(sys.argv[2]))
    print(leased.index, flush=True)
    sys.stdin.read()  # hold the lease until told to go
    os._exit(0)  # no release: the kernel must drop the lock with the process
    """
)


def test_another_process_gets_another_range_and_its_lease_ends_with_it(tmp_path: Path) -> None:
    mine = claim_uid_range(tmp_path, BASE)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), str(BASE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"1"
        assert claim_uid_range(tmp_path, BASE).index == 2  # the other process still holds 1
    finally:
        holder.communicate(b"", timeout=30)
    assert claim_uid_range(tmp_path, BASE).index == 1
    mine.release()


@pytest.mark.usefixtures("tier1_host")
def test_two_managers_never_hand_out_the_same_host_uid(tmp_path: Path) -> None:
    def manager() -> SandboxManager:
        config = ManagerConfig(pool_size=0, microvm_pool_size=0, max_sandboxes=2, uid_lease_dir=str(tmp_path))
        return SandboxManager(config)

    async def scenario() -> None:
        first, second = manager(), manager()
        await first.start()
        await second.start()
        try:
            assert set(first.host_uids).isdisjoint(second.host_uids)
            sandboxes = [await m.create() for m in (first, second, first, second)]
            uids = [s.runtime.host_uid for s in sandboxes]
            assert len(set(uids)) == 4
            assert uids[0] in first.host_uids and uids[1] in second.host_uids
        finally:
            await second.shutdown()
            await first.shutdown()
        third = manager()
        await third.start()  # the first range is free again
        assert third.host_uids == first.host_uids
        await third.shutdown()

    asyncio.run(scenario())
