"""Tier 2 from a custom template ("microvm:<template>"): the template's tree on a
read-only root disk. The VMs are shared across assertions (an emulated boot
costs seconds), and the tier-2 escape attempts of test_microvm.py run against a
VM from the template. Skipped without QEMU or the guest image (see conftest.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import test_microvm as core
from isolation_helpers import sh

from tramontane.sandbox import Sandbox
from tramontane.sandbox.microvm.disk import image_path
from tramontane.sandbox.templates import Template

if TYPE_CHECKING:
    from conftest import LiveSandboxes

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def template_vm(live_vm: LiveSandboxes, small_vm_template: Template) -> Iterator[Sandbox]:
    sandbox = live_vm.create(template=f"microvm:{small_vm_template.name}", timeout=900)
    yield sandbox
    sandbox.kill()


def test_a_vm_starts_from_the_template(
    live_vm: LiveSandboxes, template_vm: Sandbox, small_vm_template: Template
) -> None:
    out = template_vm.commands.run(
        "hello && jq -n 1+1 && cat /etc/tramontane-template.txt && echo $GREETING && "
        "python3 -c 'import tabulate; print(tabulate.__version__)' && whoami && hostname"
    ).stdout
    assert out.split("\n")[:7] == [
        "hello from the template", "2", "built from a spec", "from-template", "0.9.0", "user", "sandbox",
    ]  # fmt: skip
    assert template_vm.get_info().template == f"microvm:{small_vm_template.name}"
    runtime = live_vm.manager.get(template_vm.sandbox_id).runtime
    assert runtime.rootfs == small_vm_template.rootfs
    assert live_vm.manager.template_in_use(small_vm_template)
    # The host's /usr is not there: the template has no matplotlib, the host does.
    assert sh(template_vm, "python3 -c 'import matplotlib'")[0] != 0
    # One image per template, built once, shared by its VMs.
    assert image_path(small_vm_template.rootfs).exists()


def test_the_root_disk_is_read_only_nosuid_nodev_and_hidden(template_vm: Sandbox) -> None:
    mounts = {
        fields[4]: (fields[5], line.split(" - ")[1].split()[0])
        for line in template_vm.files.read("/proc/self/mountinfo").splitlines()
        if (fields := line.split())
    }
    for point in ("/usr", "/etc"):
        options, fstype = mounts[point]
        assert fstype == "squashfs" and {"ro", "nosuid", "nodev"} <= set(options.split(",")), point
    assert "/opt/tramontane/root" not in mounts
    assert template_vm.files.read("/etc/passwd").startswith("root:x:0:0:")
    assert "user:x:1000:1000" in template_vm.files.read("/etc/passwd")
    assert template_vm.commands.run("find / -xdev -perm /6000 -type f 2>/dev/null | head -5").stdout == ""
    for cmd in ("ls /dev/vda", "ls /root-disk", "ls /opt/tramontane/root", "echo x > /usr/x", "echo x > /etc/x"):
        assert sh(template_vm, cmd)[0] != 0, cmd
    assert sh(template_vm, "ls /sys/block")[0] != 0


# -- the tier-2 escape attempts, against a VM from the template


def test_core_isolation_checks(live_vm: LiveSandboxes, template_vm: Sandbox, host_service: int) -> None:
    run_core_checks(live_vm, template_vm, host_service)


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def qemu_is_confined(live_vm: LiveSandboxes, vm: Sandbox) -> None:
    runtime = live_vm.manager.get(vm.sandbox_id).runtime
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{runtime.process.pid}/status").read_text().splitlines())
    assert int(status["Uid"].split()[0]) == runtime.host_uid >= 1_000_000
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"


def run_core_checks(live_vm: LiveSandboxes, vm: Sandbox, host_service: int) -> None:
    """test_microvm.py's escape attempts that leave the VM usable, in one VM."""
    core.test_host_files_are_invisible(vm, vm)
    qemu_is_confined(live_vm, vm)
    core.test_no_writes_outside_the_workspace(vm)
    core.test_no_network(vm, host_service)
    core.test_host_unix_sockets_are_unreachable(vm)
    core.test_host_processes_are_out_of_reach(vm)
    core.test_the_agent_cannot_be_taken_over(vm)
    core.test_only_standard_fds_and_no_privileges(vm)
    core.test_dangerous_syscalls_are_denied(vm)
    core.test_no_kvm_no_kernel_files_no_devices(vm)
    core.test_cpu_spin_is_killed_at_its_time_limit(vm)
