"""Tier 2 (template "microvm"): the same API as tier 1, and the same escape
attempts, now against a QEMU microVM. Each must fail safely: denied inside the
guest, nothing changed on the host, the host and a bystander VM healthy after.
Under KVM where it can boot the guest, else under QEMU's CPU emulation;
skipped without QEMU or the guest image (see conftest.py)."""

from __future__ import annotations

import base64
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from isolation_helpers import (
    NETWORK_PROBE,
    PID1_MEM_WRITE,
    SANDBOX_DEV,
    denied_syscalls,
    host_pids_of_uid,
    probe_host_unix_sockets,
    py,
    sh,
)

import tramontane
from tramontane.sandbox import CommandExitException, Sandbox, SandboxState
from tramontane.sandbox.client import InvalidArgumentException, LimitReachedException, SandboxException
from tramontane.sandbox.microvm import MicroVMHost
from tramontane.sandbox.microvm.qemu import _hardware_kvm

pytestmark = pytest.mark.kvm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def create(live_vm, **kwargs) -> Sandbox:
    return live_vm.create(template="microvm", **kwargs)


@pytest.fixture
def vm(live_vm) -> Iterator[Sandbox]:
    sandbox = create(live_vm, timeout=300)
    try:
        yield sandbox
    finally:
        sandbox.kill()
        sandbox.close()


@pytest.fixture(scope="module")
def witness(live_vm) -> Iterator[Sandbox]:
    """A bystander VM that must come through the whole suite untouched."""
    sandbox = create(live_vm, timeout=900)
    sandbox.files.write("diary.txt", "intact")
    sandbox.commands.run("sleep 900", background=True).disconnect()
    yield sandbox
    sandbox.kill()


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def qemu_pid(live_vm, sandbox: Sandbox) -> int:
    return live_vm.manager.get(sandbox.sandbox_id).runtime.process.pid


# -- the API behaves as in tier 1


def test_commands_files_code_and_pause(live_vm, vm: Sandbox) -> None:
    assert vm.get_info().template == "microvm"
    result = vm.commands.run("echo out; echo err >&2; whoami; pwd; hostname")
    assert (result.stdout, result.stderr) == ("out\nuser\n/home/user\nsandbox\n", "err\n")
    vm.files.write("data/blob.bin", bytes(range(256)))
    assert vm.files.read("data/blob.bin", format="bytes") == bytes(range(256))
    assert {e.name for e in vm.files.list("data")} == {"blob.bin"}
    assert vm.run_code("x = 41").error is None and vm.run_code("x + 1").text == "42"
    vm.pause()
    assert vm.get_info().state is SandboxState.PAUSED
    assert live_vm.manager.get(vm.sandbox_id).runtime is not None  # 9p: frozen in memory
    with pytest.raises(SandboxException) as caught:
        vm.commands.run("true")
    assert caught.value.status == 409
    vm.resume()
    assert vm.commands.run("echo back").stdout == "back\n"
    with create(live_vm, envs={"WIDE": "everywhere"}, cpu=2, memory_mb=256) as other:
        assert other.commands.run("echo $WIDE; nproc").stdout == "everywhere\n2\n"
        # Metrics report what the host enforces: the QEMU cgroup's limit (the VM and QEMU).
        enforced = live_vm.manager.get(other.sandbox_id).runtime.cgroup.usage().memory_limit_bytes
        assert other.get_metrics()["memory_limit_bytes"] == enforced > 256 * 1024 * 1024


def test_auto_accelerator_falls_back_to_emulation_with_a_warning(live_vm, vm: Sandbox) -> None:
    reason = _hardware_kvm()
    host = MicroVMHost.detect("auto")
    if reason is None:
        assert host.accelerator == "kvm" and host.warning is None
    else:
        assert host.accelerator == "tcg" and reason in (host.warning or "")
    # The live VMs run under "auto" unless a test run forces one: their info says what they get.
    if live_vm.manager.config.microvm_accelerator == "auto":
        assert vm.get_info().warnings == ([host.warning] if host.warning else [])


def test_matplotlib_png(vm: Sandbox) -> None:
    execution = vm.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])", timeout=120)
    assert execution.error is None, execution.error
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(PNG_MAGIC)


# -- escape attempts


def test_host_files_are_invisible(vm: Sandbox, witness: Sandbox) -> None:
    project = Path(tramontane.__file__).resolve().parents[2]
    for path in ("/etc/shadow", "/root", "/work", str(project), "/etc/ssh", "/var", "/srv", "/mnt", "/sys"):
        code, out = sh(vm, f"ls -d {path}")
        assert code != 0 and "No such file" in out, path
    assert sh(vm, "ls /home")[1].split() == ["user"]
    assert "No such file" in sh(vm, "cat /home/user/diary.txt")[1]


def test_qemu_runs_unprivileged_and_confined(live_vm, vm: Sandbox, witness: Sandbox) -> None:
    uids = {live_vm.manager.get(s.sandbox_id).runtime.host_uid for s in (vm, witness)}
    assert len(uids) == 2 and all(uid >= 1_000_000 for uid in uids)
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{qemu_pid(live_vm, vm)}/status").read_text().splitlines()
    )
    assert int(status["Uid"].split()[0]) in uids
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"


def test_no_writes_outside_the_workspace(vm: Sandbox) -> None:
    for path in ("/x", "/usr/x", "/etc/x", "/opt/tramontane/guest/agent.py", "/proc/x", "/dev/x", "/home/x"):
        assert sh(vm, f"echo pwned > {path}")[0] != 0, path
    sh(vm, "ln -s /usr/lib escape && ln -s /etc/passwd passwd-link")
    assert sh(vm, "echo pwned > escape/evil")[0] != 0
    assert sh(vm, "echo pwned >> passwd-link")[0] != 0
    with pytest.raises(SandboxException) as caught:
        vm.files.write("escape/evil", "pwned")
    assert caught.value.status == 403
    assert not Path("/usr/lib/evil").exists() and not Path("/usr/x").exists()
    assert "user:x:1000" in vm.files.read("passwd-link")


def test_no_network(vm: Sandbox, host_service: int) -> None:
    result = py(vm, NETWORK_PROBE.replace("HOST_PORT", str(host_service)))
    assert result["external"] != "connected" and result["metadata"] != "connected"
    assert result["host_loopback"] == "ConnectionRefusedError"  # the guest's own loopback
    assert result["dns"] != "resolved" and result["udp"] != "sent"
    assert result["interfaces"] == ["lo"]


def test_host_unix_sockets_are_unreachable(vm: Sandbox) -> None:
    result = probe_host_unix_sockets(vm, "vm-isolation")
    assert result == {"path": "FileNotFoundError", "abstract": "ConnectionRefusedError"}


def test_host_processes_are_out_of_reach(vm: Sandbox) -> None:
    me = os.getpid()
    sh(vm, f"kill -9 {me}")  # at most a guest process of that number
    os.kill(me, 0)
    # The guest's processes are the agent (its PID 1), kernel threads and this command.
    assert sh(vm, "cat /proc/1/cmdline")[1].startswith("/usr/bin/python3")


def test_the_agent_cannot_be_taken_over(vm: Sandbox) -> None:
    assert py(vm, PID1_MEM_WRITE) == {"mem": "PermissionError"}
    for path in ("/proc/1/mem", "/proc/1/fd/1", "/proc/1/environ"):
        code, out = sh(vm, f"head -c 1 {path} > /dev/null")
        assert code != 0 and "Permission denied" in out, path
    for signal_name in ("STOP", "KILL"):
        sh(vm, f"kill -{signal_name} 1")
        assert vm.commands.run("echo alive").stdout == "alive\n", signal_name


def test_resource_attacks_get_clear_errors(live_vm) -> None:
    """Tier 1's attacks on the server and the agent, in one VM (emulated VMs are slow)."""
    with create(live_vm, timeout=1200) as vm:  # an emulated CPU takes minutes for all of it
        execution = vm.run_code("'x' * (100 << 20)", timeout=120)
        assert execution.error is not None and execution.error.name == "ResultTooLarge"
        vm.commands.run("mkfifo pipe")
        with pytest.raises(InvalidArgumentException) as fifo:
            vm.files.read("pipe")
        assert fifo.value.code == "not_regular"
        vm.files.write("here.txt", "x")
        with pytest.raises(InvalidArgumentException) as rename:
            vm.files.rename("here.txt", "/tmp/there.txt")
        assert rename.value.code == "cross_device"
        # Light processes, quick to start even on an emulated CPU, holding every pid.
        vm.commands.run("setsid bash -c 'while :; do sleep 1000 & done' >/dev/null 2>&1 &")
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline, "the bomb did not fill the process limit"
            try:
                vm.commands.run("true", timeout=60)
            except LimitReachedException as exhausted:
                assert exhausted.status == 409 and exhausted.code == "pids_exhausted"
                break
            except CommandExitException:  # started, but starved past its timeout (an emulated CPU)
                pass
            time.sleep(0.5)
        assert vm.commands.kill_all() > 0
        assert vm.commands.run("echo alive").stdout == "alive\n"


def test_only_standard_fds_and_no_privileges(vm: Sandbox) -> None:
    listing = "import os, json; print(json.dumps(sorted(int(f) for f in os.listdir('/proc/self/fd'))))"
    fds = json.loads(vm.commands.run(f'python3 -c "{listing}"').stdout)
    assert fds[:3] == [0, 1, 2] and len(fds) == 4
    status = dict(line.split(":\t") for line in vm.files.read("/proc/self/status").splitlines() if ":\t" in line)
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, field
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    code, out = sh(vm, "python3 -c 'import os; os.setuid(0)'")
    assert code != 0 and "PermissionError" in out


@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86-64's")
def test_dangerous_syscalls_are_denied(vm: Sandbox) -> None:
    results, expected = denied_syscalls(vm)
    assert results == expected


def test_no_kvm_no_kernel_files_no_devices(vm: Sandbox) -> None:
    for cmd in (
        "ls /dev/kvm",
        "cat /proc/kcore",
        "echo 1 > /proc/sys/kernel/sysrq",
        "echo b > /proc/sysrq-trigger",
        "echo 1 > /proc/sys/vm/drop_caches",
        "ls /dev/mem",
        "ls /dev/vda",
    ):
        assert sh(vm, cmd)[0] != 0, cmd
    assert sorted(sh(vm, "ls /dev")[1].split()) == SANDBOX_DEV


def test_fork_bomb_is_contained(live_vm) -> None:
    with create(live_vm, timeout=120) as bomb:
        code, _ = sh(bomb, "python3 -c 'import os\nwhile True:\n  try: os.fork()\n  except OSError: pass'", timeout=5)
        assert code == 137
        assert subprocess.run(["true"]).returncode == 0
        assert bomb.commands.run("echo alive").stdout == "alive\n"


def test_memory_bomb_is_killed_inside_the_vm(live_vm) -> None:
    with create(live_vm, memory_mb=64, timeout=120) as hog:
        # Chunks: one allocation larger than the guest's RAM would just be refused.
        grow = 'x = []\nwhile True:\n  b = bytearray(16 << 20); b[::4096] = b"x" * 4096; x.append(b)'
        code, _ = sh(hog, f"python3 -c '{grow}'", timeout=60)
        assert code == 137  # the guest kernel's OOM killer, inside the VM
        assert hog.get_metrics()["oom_kills"] == 0  # the host's cgroup never had to act
        assert hog.commands.run("echo alive").stdout == "alive\n"


def test_disk_fill_stops_at_the_size_limit(live_vm) -> None:
    with create(live_vm, disk_mb=16, timeout=120) as filler:
        code, out = sh(filler, "dd if=/dev/zero of=big bs=1M count=64")
        assert code != 0 and "No space left" in out
        with pytest.raises(SandboxException) as caught:
            filler.files.write("more.bin", b"x" * 2 * 1024 * 1024)
        assert caught.value.status == 409 and caught.value.code == "no_space"


def test_cpu_spin_is_killed_at_its_time_limit(vm: Sandbox) -> None:
    started = time.monotonic()
    code, _ = sh(vm, "while :; do :; done", timeout=1)
    assert code == 137 and time.monotonic() - started < 10


def test_everything_dies_with_the_vm(live_vm) -> None:
    sandbox = create(live_vm, timeout=5)
    runtime = live_vm.manager.get(sandbox.sandbox_id).runtime
    cgroup_dirs = list(runtime.cgroup.dirs.values())
    sandbox.commands.run("setsid sleep 1000 & (sleep 1000 &) & nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &")
    assert host_pids_of_uid(runtime.host_uid) == [runtime.process.pid]  # guest processes are not host processes
    deadline = time.monotonic() + 30
    while sandbox.is_running() or host_pids_of_uid(runtime.host_uid):
        assert time.monotonic() < deadline, f"left behind: {host_pids_of_uid(runtime.host_uid)}"
        time.sleep(0.1)
    assert not any(d.exists() for d in cgroup_dirs)


def test_host_and_bystanders_are_healthy(live_vm, witness: Sandbox, host_service: int) -> None:
    assert witness.files.read("diary.txt") == "intact"
    assert "sleep 900" in {p.cmd for p in witness.commands.list()}
    assert witness.commands.run("echo still here").stdout == "still here\n"
    with socket.create_connection(("127.0.0.1", host_service), timeout=2):
        pass
    with create(live_vm) as fresh:
        assert fresh.commands.run("echo fine").stdout == "fine\n"
