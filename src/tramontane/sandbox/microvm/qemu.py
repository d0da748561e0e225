"""Starting one tier-2 sandbox: QEMU `-M microvm` with the guest image.

The VM has no network device, no disk and no console: its only devices are a
virtio serial port, which QEMU joins to its own stdin/stdout (so the host
speaks to the agent exactly as to a tier-1 agent, through `launcher.attach`),
and either a read-only virtio-9p export of the host's /usr or, for a VM from a
template, that template's read-only root disk (see disk.py). A VM with a disk
also gets a QMP monitor on a socket pair, which is what pauses it to a file
(see snapshot.py); it may start from such a file (`-incoming`) instead of
booting. QEMU itself is confined
like a tier-1 sandbox: its own cgroup (VM memory plus QEMU's overhead, CPU
quota, a pids cap), its own unprivileged host uid with no capabilities and
no_new_privs (reaching /dev/kvm through the device's group only), and its
seccomp sandbox (`-sandbox on`: no exec, no privilege changes, no obsolete
syscalls).

Guest RAM is the sandbox's memory limit plus GUEST_BASE_MB for the guest
kernel, so user code gets about the memory it asked for; the guest kernel's
OOM killer acts inside the VM and the agent is its last choice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..cgroups import Cgroup, CgroupTree
from ..channel import OutputBudget
from ..errors import SandboxError, Unavailable
from ..launcher import Runtime, attach, rlimits
from ..policy import Limits
from .image import GuestImage, build
from .qmp import Monitor, run_after_incoming

logger = logging.getLogger("tramontane.sandbox")

GUEST_BASE_MB = 96  # guest kernel, page tables, the agent's python
QEMU_OVERHEAD_MB = {"kvm": 96, "tcg": 192}  # QEMU's own memory; TCG adds its translation cache
QEMU_PIDS = 128  # vCPU, I/O and 9p worker threads
BOOT_TIMEOUT_S = {"kvm": 20.0, "tcg": 180.0}
ACCELERATORS = ("kvm", "tcg")
AUTO = "auto"


def _hardware_kvm() -> str | None:
    """Why KVM cannot boot a stock kernel here, or None if it can."""
    try:
        device = os.stat("/dev/kvm")
    except OSError:
        return "/dev/kvm is missing"
    if not any(Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd")):
        # e.g. kvm_pvm (pagetable-based virtualization) inside a cloud VM: it runs
        # only guests built for it, not Debian's kernel.
        return "/dev/kvm here is not hardware virtualization (no kvm_intel/kvm_amd); it cannot boot a stock kernel"
    if device.st_mode & 0o060 != 0o060:
        # QEMU runs unprivileged, through the device's group (Debian's udev: root:kvm 0660).
        return "/dev/kvm is not read-write for its group (chmod 0660 /dev/kvm)"
    return None


def _host_tsc_khz() -> int:
    """Under TCG the guest's TSC runs at the host's rate; telling the guest skips a
    calibration that fails when the emulator is starved of CPU."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 0


@dataclass(frozen=True)
class MicroVMHost:
    qemu: str
    image: GuestImage
    accelerator: str
    warning: str | None = None  # why the CPU is emulated although KVM was asked for ("auto")

    @classmethod
    def detect(cls, accelerator: str = "kvm", qemu_path: str | None = None) -> MicroVMHost:
        """`accelerator`: kvm, tcg, or auto (KVM where it can boot the guest, else
        TCG with a warning)."""
        if accelerator == AUTO:
            try:
                return cls.detect("kvm", qemu_path)
            except Unavailable as exc:
                host = cls.detect("tcg", qemu_path)
                warning = f"microVM CPUs are emulated (QEMU TCG, several times slower): KVM is unusable: {exc.message}"
                logger.warning("%s", warning)
                return replace(host, warning=warning)
        if accelerator not in ACCELERATORS:
            raise Unavailable(f"unknown accelerator {accelerator!r}", code="microvm_unavailable")
        qemu = qemu_path or shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise Unavailable("qemu-system-x86_64 is not installed", code="microvm_unavailable")
        if accelerator == "kvm" and (reason := _hardware_kvm()) is not None:
            raise Unavailable(reason, code="microvm_unavailable")
        return cls(qemu, build(download=False), accelerator)

    def guest_ram_mb(self, limits: Limits) -> int:
        return limits.memory_mb + GUEST_BASE_MB

    def host_limits(self, limits: Limits) -> Limits:
        """What the QEMU process's cgroup allows: the whole VM and QEMU itself."""
        memory = self.guest_ram_mb(limits) + QEMU_OVERHEAD_MB[self.accelerator]
        return replace(limits, memory_mb=memory, pids=QEMU_PIDS)

    def argv(
        self, limits: Limits, kernel: str, initrd: str, *, root_disk: str | None = None,
        monitor_fd: int | None = None, incoming_fd: int | None = None,
    ) -> list[str]:
        """`root_disk`: a template's disk (a descriptor) in place of the host's /usr; `monitor_fd`:
        QEMU's end of a QMP socket pair; `incoming_fd`: a saved state to start from."""
        cmdline = [
            "quiet", "panic=-1", "console=", "8250.nr_uarts=0",
            f"workspace_mb={limits.workspace_mb}", f"tmp_mb={limits.tmp_mb}",
            "rlimits=" + ",".join(f"{k}:{v}" for k, v in rlimits(limits).items()),
        ]  # fmt: skip
        if root_disk is not None:
            cmdline.append("root_disk=vda")
        if self.accelerator == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host"]
        else:
            accel = ["-accel", "tcg,thread=multi,tb-size=64", "-cpu", "max"]
            cmdline += [f"tsc_early_khz={_host_tsc_khz()}", "no_timer_check"]
        return [
            self.qemu,
            "-M", "microvm,x-option-roms=off,isa-serial=off,rtc=off",
            *accel,
            "-m", str(self.guest_ram_mb(limits)),
            "-smp", str(max(1, math.ceil(limits.cpu))),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", kernel,
            "-initrd", initrd,
            "-append", " ".join(cmdline),
            "-chardev", "stdio,id=agent,signal=off",
            "-device", "virtio-serial-device,max_ports=2",
            "-device", "virtserialport,chardev=agent,name=agent",
            *self._root_args(root_disk),
            *(["-chardev", f"socket,id=qmp,fd={monitor_fd}", "-mon", "chardev=qmp,mode=control"] if monitor_fd else []),
            *(["-incoming", f"fd:{incoming_fd}"] if incoming_fd is not None else []),
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]  # fmt: skip

    @staticmethod
    def _root_args(root_disk: str | None) -> list[str]:
        if root_disk is None:
            return [
                "-fsdev", "local,id=usr,path=/usr,security_model=none,readonly=on",
                "-device", "virtio-9p-device,fsdev=usr,mount_tag=usr",
            ]  # fmt: skip
        # Through an fd set: QEMU uses the descriptor as it is, where reopening
        # /proc/self/fd/N would check the (root-only) image's mode against its uid.
        return [
            "-add-fd", f"fd={root_disk},set=1",
            "-drive", "id=root,if=none,format=raw,readonly=on,file=/dev/fdset/1",
            "-device", "virtio-blk-device,drive=root",
        ]  # fmt: skip

    def device_groups(self) -> list[int]:
        return [os.stat("/dev/kvm").st_gid] if self.accelerator == "kvm" else []


@dataclass(frozen=True)
class VMDisk:
    """What a VM from a template starts with: its root disk, and the saved state to
    resume from (None: boot)."""

    image: Path
    incoming: Path | None = None


def _spawn(
    host: MicroVMHost, limits: Limits, group: Cgroup, host_uid: int, disk: VMDisk | None
) -> tuple[subprocess.Popen[bytes], socket.socket | None]:
    # The shell joins the cgroup while still root, then becomes QEMU as the
    # sandbox's uid: no page of the VM is ever charged anywhere else. The image
    # (and a template's disk, and a saved state) is opened here and handed over as
    # descriptors, since the sandbox's uid cannot reach the (root-only) directories
    # they are kept in.
    image = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in (host.image.kernel, host.image.initrd)]
    inherited = list(image)
    monitor: socket.socket | None = None
    options: dict[str, Any] = {}
    try:
        if disk is not None:
            inherited.append(os.open(disk.image, os.O_RDONLY | os.O_CLOEXEC))
            options["root_disk"] = str(inherited[-1])
            monitor, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            inherited.append(theirs.detach())
            options["monitor_fd"] = inherited[-1]
            if disk.incoming is not None:
                inherited.append(os.open(disk.incoming, os.O_RDONLY | os.O_CLOEXEC))
                options["incoming_fd"] = inherited[-1]
        argv = host.argv(limits, *(f"/proc/self/fd/{fd}" for fd in image), **options)
        groups = host.device_groups()
        procs = [str(d / "cgroup.procs") for d in group.dirs.values()]
        join = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f"; shift; done; shift; exec "$@"'
        drop = [
            "setpriv", f"--reuid={host_uid}", f"--regid={host_uid}",
            f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        ]  # fmt: skip
        process = subprocess.Popen(
            ["/bin/sh", "-c", join, "sh", *procs, "--", *drop, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=inherited,
            env={"PATH": "/usr/bin:/bin"},
        )
    except BaseException:
        if monitor is not None:
            monitor.close()
        raise
    finally:
        for fd in inherited:
            os.close(fd)
    return process, monitor


async def launch_vm(
    host: MicroVMHost,
    *,
    tree: CgroupTree,
    name: str,
    limits: Limits,
    host_uid: int,
    budget: OutputBudget,
    disk: VMDisk | None = None,
) -> Runtime:
    """Boots a VM (or, with `disk.incoming`, starts one from its saved state) and
    returns once its agent answers (QEMU's errors if it cannot)."""
    group = tree.create(name, host.host_limits(limits))
    try:
        process, monitor = await asyncio.to_thread(_spawn, host, limits, group, host_uid, disk)
    except BaseException:
        group.remove()
        raise
    # A VM from a saved state runs the agent it had: it gets the new channel's key.
    resumed = disk is not None and disk.incoming is not None
    runtime = await attach(process, group, host_uid, budget, rekey=resumed)
    runtime.monitor = None if monitor is None else Monitor(monitor)
    try:
        if resumed:
            assert runtime.monitor is not None
            await asyncio.to_thread(run_after_incoming, runtime.monitor, BOOT_TIMEOUT_S[host.accelerator])
        await runtime.channel.call("ps", timeout=BOOT_TIMEOUT_S[host.accelerator])
        try:
            await runtime.channel.call("set_clock", time_ns=time.time_ns())
        except SandboxError as exc:  # the VM still works; its timestamps do not
            logger.warning("microVM %s: its wall clock was not set: %s", name, exc)
    except SandboxError as exc:  # MonitorError too: QEMU exited (a state it could not load)
        await runtime.stop()
        tail = runtime.stderr_tail.decode(errors="replace").strip()[-800:]
        what = "did not resume from its snapshot" if resumed else "did not boot"
        raise Unavailable(f"the microVM {what}: {tail or type(exc).__name__}", code="microvm_boot") from exc
    except BaseException:
        await runtime.stop()
        raise
    return runtime
