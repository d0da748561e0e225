"""Images for the container tests, built on this machine from its own files: no
registry is reachable. `busybox_image` is FROM scratch with Debian's static
busybox: an HTTP server on $PORT whose CGI script prints its environment."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

CONTAINERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY www /www
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh", "-c", "trap 'exit 0' TERM; echo serving on $PORT; httpd -f -p $PORT -h /www & wait"]
"""

ENV_CGI = """\
#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
env
"""


def podman_usable() -> bool:
    return shutil.which("podman") is not None and BUSYBOX.exists()


def busybox_context(folder: Path) -> Path:
    """A build context for the busybox image (no Containerfile written: callers add one)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, folder / "busybox")
    www = folder / "www"
    (www / "cgi-bin").mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text("hello from a container\n")
    script = www / "cgi-bin" / "env"
    script.write_text(ENV_CGI)
    script.chmod(0o755)
    return folder


def build_busybox(folder: Path) -> str:
    """Builds the busybox image under a tag of its own; returns the tag."""
    context = busybox_context(folder)
    (context / "Containerfile").write_text(CONTAINERFILE)
    tag = f"localhost/tramontane-test/busybox:{uuid.uuid4().hex[:12]}"
    subprocess.run(
        ["podman", "--runtime", "crun", "build", "--pull=never", "-q", "-t", tag, str(context)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return tag


def remove_image(tag: str) -> None:
    subprocess.run(["podman", "rmi", "--force", tag], capture_output=True, timeout=60, check=False)


def inspect(name: str, template: str) -> str:
    done = subprocess.run(
        ["podman", "inspect", "--format", template, name], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def container_exists(name: str) -> bool:
    return subprocess.run(["podman", "container", "exists", name], timeout=30, check=False).returncode == 0


__all__ = ["build_busybox", "busybox_context", "container_exists", "inspect", "podman_usable", "remove_image"]
