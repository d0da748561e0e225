"""Pause writes a tier-2 sandbox from a template to disk, memory included, and
resume brings the same VM back: the same processes with their memory, PIDs and
open files, also after a server restart. The VM is a plain "microvm" one on a
server whose default template is the tests' small one: it runs on that
template's disk, as "microvm:<default>" does. A damaged snapshot is refused, the
workspace's storage limit holds, and the tier-2 escape attempts run against the
resumed VM. One VM for all of it (an emulated boot costs seconds). Skipped
without QEMU or the guest image (see conftest.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from test_microvm_templates import qemu_is_confined, run_core_checks

from tramontane.sandbox import Sandbox, SandboxManager, SandboxState
from tramontane.sandbox.client import SandboxException
from tramontane.sandbox.snapshots import MANIFEST, VM_STATE
from tramontane.sandbox.templates import Template

if TYPE_CHECKING:
    from conftest import LiveSandboxes

pytestmark = pytest.mark.kvm

WORKSPACE = "ws_00112233445566bb"
PAUSED_AT_LEAST_S = 8.0  # longer than the clock's tolerance: a clock left behind is caught
CLOCK_TOLERANCE_S = 3.0
CAP_SYS_TIME = 25
# The effective capabilities of each process running as root, kernel threads (no command line) aside.
ROOT_CAPABILITIES = (
    "import os\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    " try:\n"
    "  user = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
    "  status = dict(line.split(':', 1) for line in open(f'/proc/{pid}/status'))\n"
    " except OSError:\n"
    "  continue\n"
    " if user and status['Uid'].split()[0] == '0':\n"
    "  print(status['CapEff'].strip())"
)
# Holds a token it drew at start in memory, and writes it with a counter through
# a file it keeps open: a restarted process would draw another token and count from 0.
KEEPER = (
    "python3 -c \"import os, time; token = os.urandom(8).hex(); f = open('/tmp/keeper', 'w')\n"
    "for n in range(10**9):\n f.seek(0); f.write(f'{token} {n:09d}'); f.flush(); time.sleep(0.1)\""
)


def _tenant_sandbox(served: LiveSandboxes, sandbox_id: str) -> Sandbox:
    return Sandbox(sandbox_id, httpx.Client(base_url=served.url, headers={"x-tenant": WORKSPACE}, timeout=600))


def _keeper(vm: Sandbox) -> tuple[str, int]:
    token, count = vm.files.read("/tmp/keeper").split()
    return token, int(count)


@pytest.fixture
def host_service() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def test_a_template_vm_pauses_to_disk_with_its_memory_and_resumes_after_a_restart(
    tmp_path: Path, serve_sandboxes, microvm_config, small_vm_template: Template, host_service: int
) -> None:
    config = microvm_config(state_dir=str(tmp_path), default_template=small_vm_template.name)
    with serve_sandboxes(SandboxManager(config)) as first:
        with httpx.Client(base_url=first.url, headers={"x-tenant": WORKSPACE}, timeout=600) as http:
            body = {"template": "microvm", "timeout": 900, "memory_mb": 256}
            created = http.post("/v1/sandboxes", json=body)
            assert created.status_code == 201, created.text
        vm = _tenant_sandbox(first, created.json()["sandbox_id"])
        info = vm.get_info()
        assert info.template == f"microvm:{small_vm_template.name}" and not any("default" in w for w in info.warnings)
        assert vm.commands.run("hello").stdout == "hello from the template\n"  # its tree, not the host's /usr
        vm.files.write("notes.txt", "written before the pause")
        assert vm.run_code("x = 41").error is None
        keeper = vm.commands.run(KEEPER, background=True)
        keeper.disconnect()
        for _ in range(300):
            if vm.commands.run("test -s /tmp/keeper && echo y || true").stdout == "y\n":
                break
        token, before = _keeper(vm)
        # The guest has no clock of its own: the host set it at boot.
        assert abs(float(vm.commands.run("date +%s.%N").stdout) - time.time()) < CLOCK_TOLERANCE_S
        # The one process left as root in the guest, the clock keeper, can set the clock and nothing else.
        roots = vm.commands.run(f"python3 -c \"{ROOT_CAPABILITIES}\"").stdout.split()
        assert [int(c, 16) for c in roots] == [1 << CAP_SYS_TIME], roots

        # Past the workspace's storage limit: refused, nothing left, the VM runs on.
        first.manager.snapshots.bytes_per_workspace = 1 << 20
        with pytest.raises(SandboxException) as full:
            vm.pause()
        assert full.value.status == 409 and full.value.code == "snapshot_storage_limit"
        assert not (tmp_path / "workspaces" / WORKSPACE / "sandbox-snapshots").exists() or not any(
            (tmp_path / "workspaces" / WORKSPACE / "sandbox-snapshots").iterdir()
        )
        assert vm.get_info().state is SandboxState.RUNNING and vm.run_code("x + 1").text == "42"
        first.manager.snapshots.bytes_per_workspace = 10 << 30

        vm.pause()
        paused_at = time.monotonic()
        assert vm.get_info().state is SandboxState.PAUSED
        assert first.manager.get(vm.sandbox_id).runtime is None  # no QEMU left
        directory = first.manager._snapshots[vm.sandbox_id].directory
        assert directory.parent == tmp_path / "workspaces" / WORKSPACE / "sandbox-snapshots"  # erased with it
        assert (directory / VM_STATE).stat().st_size > 16 << 20 and (directory / MANIFEST).exists()
        assert first.manager.snapshots.used_bytes(WORKSPACE) >= (directory / VM_STATE).stat().st_size
        assert first.manager.template_in_use(small_vm_template)  # a paused VM pins its template
        with pytest.raises(SandboxException) as paused:
            vm.commands.run("true")
        assert paused.value.status == 409
        sandbox_id = vm.sandbox_id

    with serve_sandboxes(SandboxManager(config)) as second:
        vm = _tenant_sandbox(second, sandbox_id)
        assert vm.get_info().state is SandboxState.PAUSED
        state = second.manager._snapshots[sandbox_id].directory / VM_STATE
        raw = bytearray(state.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        state.write_bytes(bytes(raw))
        with pytest.raises(SandboxException) as damaged:
            vm.resume()
        assert damaged.value.status == 409 and damaged.value.code == "snapshot_corrupted"
        assert vm.get_info().state is SandboxState.PAUSED
        raw[len(raw) // 2] ^= 0xFF
        state.write_bytes(bytes(raw))

        time.sleep(max(0.0, PAUSED_AT_LEAST_S - (time.monotonic() - paused_at)))
        vm.resume()
        assert vm.get_info().state is SandboxState.RUNNING
        # The wall clock is set again, not behind by the time spent on disk.
        guest_now = float(vm.commands.run("date +%s.%N").stdout)
        assert abs(guest_now - time.time()) < CLOCK_TOLERANCE_S, guest_now - time.time()
        assert not state.parent.exists()  # a resumed snapshot is consumed
        # The same VM: the interpreter's variable, the keeper's PID, token and open file.
        assert vm.run_code("x + 1").text == "42"
        assert keeper.pid in {p.pid for p in vm.commands.list()}
        assert vm.files.read("notes.txt") == "written before the pause"
        resumed_token, after = _keeper(vm)
        assert resumed_token == token and after >= before
        for _ in range(100):
            if _keeper(vm)[1] > after:
                break
        assert _keeper(vm)[1] > after  # it carries on counting
        assert json.loads(vm.commands.run("python3 -c 'import json; print(json.dumps(1))'").stdout) == 1
        qemu_is_confined(second, vm)
        run_core_checks(second, vm, host_service)
        vm.kill()
