"""Host uid ranges, one per sandbox manager on a host.

Sandboxes are told apart by their host uid, so two managers on one host (two
`tramontane up` processes, say) must never hand out the same one. Each manager
leases a range of `RANGE_SIZE` uids: range i starts at `base + i * RANGE_SIZE`
and is held through an exclusive `flock` on `<lease dir>/<i>.lock`. The kernel
drops the lock when the process exits, however it exits, so a crashed server
leaves no stale lease; the file itself (naming the holder's pid) stays for the
next claimant to lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import Unavailable

# /run: the host's runtime state, gone at reboot along with every sandbox.
LEASE_DIR = "/run/tramontane-sandbox-uids"
RANGE_SIZE = 65_536
# 1024 ranges from the default base end below 2**31: uids stay positive in any signed 32-bit field.
MAX_RANGES = 1024


class UidRange:
    """`size` host uids from `first`, held until `release` (or the process's exit)."""

    def __init__(self, first: int, size: int, index: int, fd: int):
        self.first = first
        self.size = size
        self.index = index
        self._fd: int | None = fd

    def __contains__(self, uid: int) -> bool:
        return self.first <= uid < self.first + self.size

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the lock releases it
            self._fd = None


def claim_uid_range(lease_dir: str | Path, base: int, *, max_ranges: int = MAX_RANGES) -> UidRange:
    """The first free range, leased to this process; Unavailable when all are held."""
    directory = Path(lease_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for index in range(max_ranges):
        # O_CLOEXEC: a sandbox (or any child) inheriting the descriptor would keep
        # the lease alive after this process is gone.
        fd = os.open(directory / f"{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for an operator wondering who holds it
        return UidRange(base + index * RANGE_SIZE, RANGE_SIZE, index, fd)
    raise Unavailable(f"all {max_ranges} sandbox uid ranges in {directory} are held", code="uid_ranges_exhausted")
