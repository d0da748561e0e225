"""What tier-1 sandbox tests need from the host, shared by the sandbox tests and
the multi-node tests that start sandbox hosts."""

from __future__ import annotations

import os
import shutil

from tramontane.sandbox.cgroups import CgroupTree
from tramontane.sandbox.errors import SandboxError


def tier1_unavailable_reason() -> str | None:
    """Why this host cannot run tier-1 sandboxes, or None if it can."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    if os.geteuid() != 0:
        return "tier-1 sandboxes need root (a host uid and a cgroup per sandbox)"
    try:
        CgroupTree.detect()
    except (OSError, SandboxError) as exc:
        return f"cgroups are not usable here: {exc}"
    return None
