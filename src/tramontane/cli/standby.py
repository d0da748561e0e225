"""The standby interpreter's entry point (`python -m tramontane.cli.standby`):
torch and the CLI imported, it says it is ready, then runs the one `tramontane`
command it is handed on stdin (see `control/backends/standby.py`)."""

from __future__ import annotations

import json
import os
import sys

from ..control.backends.standby import READY


def main() -> None:
    import torch  # noqa: F401  (the point: imported before it is needed)

    from . import app

    os.write(1, READY)
    line = sys.stdin.readline()
    if not line:
        return  # closed unused
    assignment = json.loads(line)
    log_fd = os.open(assignment["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for fd in (1, 2):
        os.dup2(log_fd, fd)
    os.close(log_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.update(assignment["env"])
    sys.argv = ["tramontane", *assignment["args"]]
    app(prog_name="tramontane")


if __name__ == "__main__":
    main()
