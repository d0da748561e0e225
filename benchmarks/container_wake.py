"""Wake from zero for an image deployment (Podman + crun), through a real HTTP
server on loopback, to the first byte of a GET through the router:

- light sleep: the container was frozen (`podman pause`); wake = `podman unpause`
  and a health probe;
- deep sleep: the container was stopped and removed; wake = `podman run` of the
  image (create, start, port published) until its server answers;
- a command deployment of the same server (busybox httpd on the host) for contrast.

The image is busybox httpd FROM scratch, built here from the host's static busybox.

    python benchmarks/container_wake.py [--light-runs 10] [--deep-runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from percentiles import summary

from tramontane.control.install import install
from tramontane.control.plane import ControlPlane
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy

CONTAINERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CMD ["/bin/sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p $PORT -h /www"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _build_image(folder: Path) -> str:
    shutil.copy("/bin/busybox", folder / "busybox")
    (folder / "Containerfile").write_text(CONTAINERFILE)
    tag = f"localhost/tramontane-bench/httpd:{uuid.uuid4().hex[:8]}"
    subprocess.run(["podman", "build", "-q", "--pull=never", "-t", tag, str(folder)], check=True, capture_output=True)
    return tag


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="tramontane-container-bench-"))
    image = _build_image(home)
    store = open_store(f"sqlite:///{home / 'db.sqlite'}")
    tenancy = Tenancy(store, home=home)
    ws, key = tenancy.create_tenant("bench", frozenset({Capability.DEPLOY, Capability.INFERENCE}))
    plane = ControlPlane(store, home=home, reconcile_interval_s=0.5)
    await plane.start()
    app = FastAPI()
    tenancy.install(app)
    install(app, plane, tenancy)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as client:
            await _until(lambda: server.started, "the server")

            async def deploy(name: str, light_sleep_s: float, **fields: object) -> None:
                scaling = {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_after_s": 3600}
                body = {
                    "name": name,
                    "resources": {"cpu": 1, "memory_mb": 128},
                    "health_check": {"type": "tcp", "grace_period_s": 60},
                    "scaling": {**scaling, "light_sleep_s": light_sleep_s},
                    **fields,
                }
                (await client.post("/v1/deployments", json=body)).raise_for_status()

            async def wakes(name: str, runs: int) -> list[float]:
                timings = []
                for _ in range(runs + 1):  # the first request starts it: not a wake
                    await plane.scale(ws, name, 0)
                    await _until(
                        lambda: not plane.get(ws, name).live()
                        and all(r.slept_at is not None for r in plane.get(ws, name).sleeping()),
                        f"{name} asleep",
                    )
                    started = time.perf_counter()
                    (await client.get(f"/serve/{name}/")).raise_for_status()
                    timings.append(time.perf_counter() - started)
                return timings[1:]

            await deploy("light", 3600, kind="image", image=image)
            await deploy("deep", 0, kind="image", image=image)
            await deploy("host", 0, command="exec busybox httpd -f -p $PORT -h " + str(home))
            (home / "index.html").write_text("ok\n")
            print("Wake from zero to first byte through the router (image: busybox httpd FROM scratch):")
            print(f"  image, light sleep (unpause)      {summary(await wakes('light', args.light_runs), scale=1000)}")
            print(f"  image, deep sleep (podman run)    {summary(await wakes('deep', args.deep_runs), scale=1000)}")
            print(f"  command on the host, deep sleep   {summary(await wakes('host', args.deep_runs), scale=1000)}")
    finally:
        server.should_exit = True
        await serving
        await plane.stop()
        store.close()
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--light-runs", type=int, default=10)
    parser.add_argument("--deep-runs", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
