"""Sandboxes for AI agents behind one E2B-shaped REST API and Python SDK, in two
tiers picked by template: "base" (tier 1: Linux namespaces through bubblewrap, a
seccomp filter, a cgroup and rlimits per sandbox, no network unless an egress
allow-list opens a way out through a host-side proxy, see `egress`) and "microvm"
(tier 2: the same agent and filter inside a QEMU microVM under KVM, see
`microvm`).

Host side (inside the platform's event loop):

    manager = SandboxManager()
    await manager.start()
    sandbox = await manager.create(SandboxSpec(timeout_s=60))  # template="microvm": tier 2
    result = await sandbox.commands.run("echo hi")
    app.include_router(create_router(manager))

Client side (any process that reaches the API):

    with Sandbox.create(api_url="http://127.0.0.1:8000") as sbx:
        sbx.commands.run("echo hi").stdout
"""

from .api import create_router
from .client import CommandExitException, Sandbox, SandboxException
from .errors import SandboxError
from .execution import Execution, ExecutionError, Result
from .files import EntryInfo
from .manager import ManagerConfig, SandboxManager
from .policy import Limits, NetworkPolicy, SandboxSpec
from .process import CommandResult
from .sandbox import ManagedSandbox, SandboxInfo, SandboxState

__all__ = [
    "CommandExitException",
    "CommandResult",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "Limits",
    "ManagedSandbox",
    "ManagerConfig",
    "NetworkPolicy",
    "Result",
    "Sandbox",
    "SandboxError",
    "SandboxException",
    "SandboxInfo",
    "SandboxManager",
    "SandboxSpec",
    "SandboxState",
    "create_router",
]
