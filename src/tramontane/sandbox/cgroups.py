"""One cgroup per sandbox: memory, pids and CPU ceilings, freezing, and killing
everything inside at once.

Both hierarchies are handled. cgroup v2 (one unified tree) when /sys/fs/cgroup is
cgroup2; otherwise v1, one tree per controller (hybrid hosts land here too, since
their controllers are bound to the v1 trees).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import Unavailable
from .policy import Limits, MiB

CFS_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
V1_OPTIONAL = ("cpuacct",)  # CPU time used, for metrics; often mounted with cpu
V2_CONTROLLERS = ("memory", "pids", "cpu")
GROUP_NAME = "tramontane-sandboxes"
# An empty sandbox cgroup older than this is a crashed run's leftover.
STALE_AFTER_S = 60.0


@dataclass
class Usage:
    memory_bytes: int
    pids: int
    oom_kills: int
    memory_limit_bytes: int  # what the cgroup enforces (for a microVM: the VM and QEMU)
    cpu_usage_us: int = 0  # CPU time used by all its processes since it was made


def _limit(path: Path) -> int:
    text = path.read_text().strip()
    return -1 if text == "max" else int(text)


def _write(path: Path, value: str) -> None:
    # Unbuffered, one write(2): cgroup files reject a value split across writes.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_int_field(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _until(done: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    end = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
    return True


def _kill_and_wait(procs_files: list[Path], deadline_s: float) -> None:
    """SIGKILLs whatever the cgroup holds until it is empty."""
    end = time.monotonic() + deadline_s
    while True:
        pids = {int(p) for f in procs_files for p in f.read_text().split()}
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > end:
            raise Unavailable(f"cgroup {procs_files[0].parent} did not empty")
        time.sleep(0.005)


class CgroupV1:
    def __init__(self, dirs: dict[str, Path]):
        self.dirs = dirs  # controller -> this cgroup's directory in that controller's tree

    def set_limits(self, limits: Limits) -> None:
        memory = self.dirs["memory"]
        # memsw (RAM + swap) must stay >= the RAM limit, so its order depends on direction.
        memsw = memory / "memory.memsw.limit_in_bytes"
        value = str(limits.memory_mb * MiB)
        if memsw.exists():
            try:
                _write(memory / "memory.limit_in_bytes", value)
                _write(memsw, value)
            except OSError:
                _write(memsw, value)
                _write(memory / "memory.limit_in_bytes", value)
        else:
            _write(memory / "memory.limit_in_bytes", value)
        _write(self.dirs["pids"] / "pids.max", str(limits.pids))
        _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(int(limits.cpu * CFS_PERIOD_US)))

    def add(self, pid: int) -> None:
        for d in self.dirs.values():
            _write(d / "cgroup.procs", str(pid))

    def freeze(self) -> bool:
        state = self.dirs["freezer"] / "freezer.state"
        _write(state, "FROZEN")
        return _until(lambda: state.read_text().strip() == "FROZEN")

    def thaw(self) -> None:
        _write(self.dirs["freezer"] / "freezer.state", "THAWED")

    def kill(self) -> None:
        # Frozen first so nothing can fork while the list is being killed;
        # SIGKILL is delivered on thaw.
        self.freeze()
        procs = [d / "cgroup.procs" for d in self.dirs.values()]
        for pid in {int(p) for f in procs for p in f.read_text().split()}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.thaw()
        _kill_and_wait(procs, deadline_s=5.0)

    def procs(self) -> list[int]:
        """The host pids of every process in the cgroup."""
        return [int(p) for p in (self.dirs["pids"] / "cgroup.procs").read_text().split()]

    def usage(self) -> Usage:
        memory = self.dirs["memory"]
        return Usage(
            memory_bytes=int((memory / "memory.usage_in_bytes").read_text()),
            pids=int((self.dirs["pids"] / "pids.current").read_text()),
            oom_kills=_read_int_field(memory / "memory.oom_control", "oom_kill"),
            memory_limit_bytes=_limit(memory / "memory.limit_in_bytes"),
            cpu_usage_us=self._cpu_usage_us(),
        )

    def _cpu_usage_us(self) -> int:
        # cpuacct is mounted with cpu on most hosts; where it is not, CPU use is unknown (0).
        usage = self.dirs.get("cpuacct", self.dirs["cpu"]) / "cpuacct.usage"
        return int(usage.read_text()) // 1000 if usage.exists() else 0

    def remove(self) -> None:
        for d in self.dirs.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass


class CgroupV2:
    def __init__(self, path: Path):
        self.path = path
        self.dirs = {"unified": path}

    def set_limits(self, limits: Limits) -> None:
        _write(self.path / "memory.max", str(limits.memory_mb * MiB))
        if (self.path / "memory.swap.max").exists():
            _write(self.path / "memory.swap.max", "0")
        _write(self.path / "pids.max", str(limits.pids))
        _write(self.path / "cpu.max", f"{int(limits.cpu * CFS_PERIOD_US)} {CFS_PERIOD_US}")

    def add(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", str(pid))

    def freeze(self) -> bool:
        _write(self.path / "cgroup.freeze", "1")
        return _until(lambda: _read_int_field(self.path / "cgroup.events", "frozen") == 1)

    def thaw(self) -> None:
        _write(self.path / "cgroup.freeze", "0")

    def kill(self) -> None:
        procs = [self.path / "cgroup.procs"]
        if (self.path / "cgroup.kill").exists():  # Linux >= 5.14: atomic, fork-proof
            _write(self.path / "cgroup.kill", "1")
        else:
            self.freeze()
            for pid in procs[0].read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.thaw()
        _kill_and_wait(procs, deadline_s=5.0)

    def procs(self) -> list[int]:
        """The host pids of every process in the cgroup."""
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def usage(self) -> Usage:
        return Usage(
            memory_bytes=int((self.path / "memory.current").read_text()),
            pids=int((self.path / "pids.current").read_text()),
            oom_kills=_read_int_field(self.path / "memory.events", "oom_kill"),
            memory_limit_bytes=_limit(self.path / "memory.max"),
            cpu_usage_us=_read_int_field(self.path / "cpu.stat", "usage_usec"),
        )

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass


Cgroup = CgroupV1 | CgroupV2


def _mounts(mountinfo: str) -> list[tuple[str, Path, str, set[str]]]:
    """(root inside the hierarchy, mount point, fs type, super options) of each cgroup mount."""
    found = []
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        parts, tail_parts = fields.split(), tail.split()
        if len(tail_parts) >= 3 and tail_parts[0] in ("cgroup", "cgroup2"):
            found.append((parts[3], Path(parts[4]), tail_parts[0], set(tail_parts[2].split(","))))
    return found


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


class CgroupTree:
    """Where sandbox cgroups are made: `<parent>/tramontane-sandboxes/<sandbox id>`.

    v1 nests under this process's own cgroup in each controller, so sandboxes stay
    inside whatever limits the host placed on the platform. v2 forbids processes in
    a cgroup whose children have controllers, so it uses `parent` (default: the
    root of the unified tree, which is exempt from that rule).
    """

    def __init__(self, version: int, bases: dict[str, Path]):
        self.version = version
        self.bases = bases

    @classmethod
    def detect(cls, v2_parent: str = "/") -> CgroupTree:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = _own_paths(Path("/proc/self/cgroup").read_text())
        mounts = _mounts(mountinfo)
        unified = [m for m in mounts if m[1] == Path("/sys/fs/cgroup") and m[2] == "cgroup2"]
        if unified:
            point = unified[0][1]
            base = point / v2_parent.strip("/") / GROUP_NAME
            parent = base.parent
            if not base.exists():
                base.mkdir()
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
            missing = [c for c in V2_CONTROLLERS if c not in enabled]
            if missing:
                _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
            _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))
            return cls(2, {"unified": base})
        bases = {}
        for controller in V1_CONTROLLERS:
            mount = next((m for m in mounts if m[2] == "cgroup" and controller in m[3]), None)
            if mount is None:
                raise Unavailable(f"the {controller} cgroup controller is not mounted", code="cgroups_unavailable")
            root, point = mount[0], mount[1]
            relative = os.path.relpath(own.get(controller, "/"), root)
            base = (point / relative / GROUP_NAME).resolve()
            base.mkdir(exist_ok=True)
            bases[controller] = base
        for controller in V1_OPTIONAL:
            mount = next((m for m in mounts if m[2] == "cgroup" and controller in m[3]), None)
            if mount is not None and mount[1] not in {m[1] for m in mounts if set(V1_CONTROLLERS) & m[3]}:
                base = (mount[1] / os.path.relpath(own.get(controller, "/"), mount[0]) / GROUP_NAME).resolve()
                base.mkdir(exist_ok=True)
                bases[controller] = base
        return cls(1, bases)

    def create(self, name: str, limits: Limits) -> Cgroup:
        dirs = {c: base / name for c, base in self.bases.items()}
        for d in dirs.values():
            d.mkdir()
        group: Cgroup = CgroupV2(dirs["unified"]) if self.version == 2 else CgroupV1(dirs)
        try:
            group.set_limits(limits)
        except OSError:
            group.remove()
            raise
        return group

    def reap_stale(self, min_age_s: float = STALE_AFTER_S) -> None:
        """Removes the empty cgroups a crashed earlier run left behind. Not a young
        one: another manager on this host may be launching into it (its process
        goes in a moment after the cgroup is made)."""
        young = time.time() - min_age_s
        for base in self.bases.values():
            for child in base.iterdir():
                if not child.is_dir() or child.stat().st_mtime > young:
                    continue
                if not (child / "cgroup.procs").read_text().strip():
                    try:
                        child.rmdir()
                    except OSError:
                        pass
