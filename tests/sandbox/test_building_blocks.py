"""The pieces that need no sandbox: policy validation, the seccomp program, the
bwrap command line, cgroup file handling (v2 against a fake tree, since this
host may only have v1) and /proc parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tramontane.sandbox import bwrap, seccomp
from tramontane.sandbox.cgroups import CgroupTree, CgroupV2, _mounts, _own_paths
from tramontane.sandbox.errors import InvalidArgument
from tramontane.sandbox.policy import Limits, NetworkPolicy, SandboxSpec
from tramontane.sandbox.schemas import CreateSandboxBody

MAX = Limits(cpu=4, memory_mb=4096, pids=1024, workspace_mb=4096, tmp_mb=1024, nofile=4096)
TEMPLATES = frozenset({"base"})


def validate(spec: SandboxSpec) -> SandboxSpec:
    return spec.validate(templates=TEMPLATES, max_limits=MAX, max_timeout_s=3600)


def test_spec_validation() -> None:
    validate(SandboxSpec(env={"A_1": "x"}, metadata={"k": "v"}))
    cases = [
        (SandboxSpec(template="nope"), "template"),
        (SandboxSpec(timeout_s=0), "timeout"),
        (SandboxSpec(timeout_s=7200), "timeout"),
        (SandboxSpec(idle_timeout_s=0.1), "idle_timeout"),
        (SandboxSpec(env={"1BAD": "x"}), "envs"),
        (SandboxSpec(env={"A": "nul\0"}), "envs"),
        (SandboxSpec(metadata={str(i): "v" for i in range(100)}), "metadata"),
        (SandboxSpec(limits=Limits(memory_mb=8192)), "memory_mb"),
        (SandboxSpec(limits=Limits(cpu=0.01)), "cpu"),
        (SandboxSpec(network=NetworkPolicy(allow_out=("pypi.org",))), "network.allow_out"),
    ]
    for spec, param in cases:
        with pytest.raises(InvalidArgument) as caught:
            validate(spec)
        assert caught.value.param == param, spec


def test_request_body_maps_to_spec() -> None:
    body = CreateSandboxBody(timeout=60, cpu=0.5, disk_mb=128, envs={"A": "b"}, allow_internet_access=True)
    spec = body.spec(Limits())
    assert (spec.timeout_s, spec.limits.cpu, spec.limits.workspace_mb, spec.limits.memory_mb) == (60, 0.5, 128, 512)
    assert spec.env == {"A": "b"} and spec.network.allow_out == ("*:*",)


def test_seccomp_program_compiles() -> None:
    program = seccomp.filter_bpf()
    assert len(program) % 8 == 0 and len(program) > 8 * len(seccomp.DENIED_SYSCALLS)
    assert {"ptrace", "io_uring_setup", "bpf", "mount", "unshare", "keyctl"} <= set(seccomp.DENIED_SYSCALLS)


def test_bwrap_argv_isolates_everything() -> None:
    fds = bwrap.LaunchFds(seccomp=10, info=11, block=12, files={"/etc/passwd": 13})
    argv = bwrap.build_argv("/usr/bin/bwrap", Limits(workspace_mb=100, tmp_mb=10), fds, ["/usr/bin/python3"])
    joined = " ".join(argv)
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--new-session", "--die-with-parent"):
        assert flag in argv
    assert "--cap-drop ALL" in joined and "--seccomp 10" in joined and "--block-fd 12" in joined
    assert "--size 104857600 --tmpfs /home/user" in joined and "--size 10485760 --tmpfs /tmp" in joined
    assert "--ro-bind /usr /usr" in joined and "--remount-ro /" in joined
    assert "--ro-bind-data 13 /etc/passwd" in joined
    binds = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind", "--dev-bind")]
    assert not [b for b in binds if b.startswith(("/root", "/home", "/work", "/etc/shadow", "/sys", "/proc", "/dev"))]
    assert "--bind" not in argv and "--dev-bind" not in argv  # nothing of the host is writable
    assert argv[-2:] == ["--", "/usr/bin/python3"]


def test_sandbox_files_carry_the_guest_code() -> None:
    files = bwrap.sandbox_files()
    assert b"user:x:1000:1000" in files["/etc/passwd"]
    assert b"class Agent" in files[f"{bwrap.GUEST_ROOT}/guest/agent.py"]


def _fake_v2(tmp_path: Path) -> CgroupV2:
    for name in (
        "memory.max",
        "memory.swap.max",
        "pids.max",
        "cpu.max",
        "cgroup.freeze",
        "cgroup.kill",
        "cgroup.procs",
    ):
        (tmp_path / name).write_text("")
    (tmp_path / "cgroup.events").write_text("populated 0\nfrozen 1\n")
    (tmp_path / "memory.current").write_text("1234\n")
    (tmp_path / "pids.current").write_text("3\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    return CgroupV2(tmp_path)


def test_cgroup_v2_files(tmp_path: Path) -> None:
    group = _fake_v2(tmp_path)
    group.set_limits(Limits(cpu=1.5, memory_mb=256, pids=99))
    assert (tmp_path / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (tmp_path / "memory.swap.max").read_text() == "0"
    assert (tmp_path / "pids.max").read_text() == "99"
    assert (tmp_path / "cpu.max").read_text() == "150000 100000"
    assert group.freeze()
    group.kill()
    assert (tmp_path / "cgroup.kill").read_text() == "1"
    usage = group.usage()
    assert (usage.memory_bytes, usage.pids, usage.oom_kills, usage.cpu_usage_us) == (1234, 3, 1, 2_500_000)


def test_proc_parsing() -> None:
    mountinfo = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:38 /docker/abc /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
    )
    mounts = _mounts(mountinfo)
    assert [(m[0], str(m[1]), m[2]) for m in mounts] == [
        ("/", "/sys/fs/cgroup/memory", "cgroup"),
        ("/", "/sys/fs/cgroup/cpu,cpuacct", "cgroup"),
        ("/docker/abc", "/sys/fs/cgroup/unified", "cgroup2"),
    ]
    assert {"cpu", "cpuacct"} <= mounts[1][3]
    own = _own_paths("4:memory:/process_api/x\n1:cpu,cpuacct:/\n0::/user.slice\n")
    assert own == {"memory": "/process_api/x", "cpu": "/", "cpuacct": "/", "": "/user.slice"}


def test_reaping_spares_a_young_empty_cgroup(tier1_host: None) -> None:
    """Another manager on the host makes a sandbox's cgroup a moment before its
    process goes in: a manager starting meanwhile must not take it for a leftover."""
    tree = CgroupTree.detect()
    group = tree.create(f"reap-test-{os.getpid()}", Limits())
    try:
        tree.reap_stale()
        assert all(d.is_dir() for d in group.dirs.values())
        tree.reap_stale(min_age_s=0)
        assert not any(d.exists() for d in group.dirs.values())
    finally:
        if any(d.exists() for d in group.dirs.values()):
            group.remove()
