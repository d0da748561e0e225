"""Image deployments end to end with Podman and crun: a container per replica, its
port published on loopback, its cgroup limits set, paused for light sleep,
removed for deep sleep, and the faults: a missing image, a container that exits at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from container_images import build_busybox, container_exists, inspect, podman_usable, remove_image
from control_helpers import Env

from tramontane.control.backends import LocalBackend
from tramontane.control.backends.memory import MemoryBackend
from tramontane.control.containers import container_name
from tramontane.control.states import ReplicaState

needs_podman = pytest.mark.skipif(not podman_usable(), reason="needs podman and busybox-static")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tag = build_busybox(tmp_path_factory.mktemp("busybox"))
    yield tag
    remove_image(tag)


def image_spec(name: str, image: str, **overrides) -> dict:
    base = {
        "name": name,
        "kind": "image",
        "image": image,
        "env": {"GREETING": "bonjour"},
        "resources": {"cpu": 0.5, "memory_mb": 64},
        "health_check": {"type": "http", "path": "/", "grace_period_s": 20, "interval_s": 0.2},
        "scaling": {"min_replicas": 1, "max_replicas": 1, "downscale_delay_s": 0},
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return base


async def _wait_for(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _replicas(env: Env, name: str):
    return list(env.plane.get(env.workspace_id, name).replicas.values())


@needs_podman
async def test_image_runs_with_its_port_env_and_cgroup_limits(env: Env, image: str) -> None:
    created = await env.client.post("/v1/deployments", json=image_spec("web", image))
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == "image"

    page = await env.client.get("/serve/web/")
    assert page.status_code == 200, page.text
    assert page.text == "hello from a container\n"

    [replica] = _replicas(env, "web")
    assert replica.handle is not None
    environment = (await env.client.get("/serve/web/cgi-bin/env")).text
    assert "GREETING=bonjour" in environment
    # The container listens on the replica's own port, given as $PORT.
    assert f"PORT={replica.handle.port}" in environment
    assert "TRAMONTANE_DATABASE_URL" not in environment

    name = container_name(replica.id)
    # The engine's cgroups hold what the scheduler reserved.
    assert inspect(name, "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}") == f"{64 * 2**20} {500_000_000}"
    # Published on loopback only.
    assert inspect(name, "{{json .HostConfig.PortBindings}}").count('"HostIp":"127.0.0.1"') == 1
    assert "serving on" in (await env.client.get("/v1/deployments/web/logs")).text

    assert (await env.client.delete("/v1/deployments/web")).status_code == 200
    assert not container_exists(name)


@needs_podman
async def test_container_port_is_published_to_the_replica_port(env: Env, image: str) -> None:
    body = image_spec("fixed", image, container_port=8080)
    assert (await env.client.post("/v1/deployments", json=body)).status_code == 201
    environment = await env.client.get("/serve/fixed/cgi-bin/env")
    assert environment.status_code == 200 and "PORT=8080" in environment.text
    [replica] = _replicas(env, "fixed")
    assert replica.handle is not None and replica.handle.port != 8080


@needs_podman
async def test_light_sleep_pauses_and_deep_sleep_removes_the_container(env: Env, image: str) -> None:
    scaling = {"min_replicas": 0, "scale_to_zero_after_s": 0.3, "light_sleep_s": 600}
    assert (await env.client.post("/v1/deployments", json=image_spec("nap", image, scaling=scaling))).status_code == 201
    assert (await env.client.get("/serve/nap/")).status_code == 200
    [replica] = _replicas(env, "nap")
    name = container_name(replica.id)

    await _wait_for(lambda: replica.state is ReplicaState.SLEEPING and replica.slept_at is not None, what="sleep")
    assert replica.held_memory_mb > 0
    # Frozen: it answers nothing until woken.
    assert replica.handle is not None
    async with httpx.AsyncClient(timeout=0.5) as direct:
        with pytest.raises(httpx.TimeoutException):
            await direct.get(f"http://127.0.0.1:{replica.handle.port}/")

    woken = await env.client.get("/serve/nap/")
    assert woken.status_code == 200
    assert [r.id for r in _replicas(env, "nap")] == [replica.id]  # the same container, thawed
    assert inspect(name, "{{.State.Status}}") == "running"

    # Deep sleep: the plane stops it; the next request runs the image again.
    await env.client.post("/v1/deployments/nap/scale", json={"replicas": 0})
    env.plane.get(env.workspace_id, "nap").replicas[replica.id].slept_at = -1e9
    await _wait_for(lambda: not _replicas(env, "nap"), what="deep sleep")
    assert not container_exists(name)
    assert (await env.client.get("/serve/nap/")).status_code == 200
    assert [r.id for r in _replicas(env, "nap")] != [replica.id]


@needs_podman
async def test_missing_image_is_refused_at_create(env: Env) -> None:
    missing = await env.client.post("/v1/deployments", json=image_spec("ghost", "localhost/no-such-image:1"))
    assert missing.status_code == 400, missing.text
    assert missing.json()["error"]["code"] == "image_not_found"
    assert "tramontane build" in missing.json()["error"]["message"]
    foreign = await env.client.post(
        "/v1/deployments", json=image_spec("thief", "localhost/tramontane/builds/ws_other/app:abc")
    )
    assert foreign.status_code == 403
    assert (await env.client.get("/v1/deployments")).json()["data"] == []


@needs_podman
async def test_image_spec_is_validated(env: Env, image: str) -> None:
    no_image = await env.client.post("/v1/deployments", json={"name": "bare", "kind": "image"})
    assert no_image.status_code == 422
    stray = await env.client.post("/v1/deployments", json={"name": "cmd", "command": "true", "image": image})
    assert stray.status_code == 422


@needs_podman
async def test_container_exiting_at_once_backs_off(env: Env, image: str) -> None:
    body = image_spec("crash", image, command="echo about to fail; exit 3")
    assert (await env.client.post("/v1/deployments", json=body)).status_code == 201
    [replica] = _replicas(env, "crash")
    await _wait_for(lambda: replica.restarts >= 3, what="restarts")
    started = time.monotonic()
    seen = replica.restarts
    await asyncio.sleep(1.0)
    # Backing off: doubling waits, not a tight loop of container starts.
    assert replica.restarts - seen <= 3, f"{replica.restarts - seen} restarts in {time.monotonic() - started:.1f} s"
    assert replica.state is not ReplicaState.RUNNING
    logs = (await env.client.get("/v1/deployments/crash/logs")).text
    assert logs.count("about to fail") >= 3


@needs_podman
async def test_command_missing_from_the_image_is_in_the_log(env: Env, image: str) -> None:
    # An image whose entrypoint does not exist: podman says why, in the replica's log.
    body = image_spec("nocmd", image, command="exec /no/such/server")
    assert (await env.client.post("/v1/deployments", json=body)).status_code == 201
    [replica] = _replicas(env, "nocmd")
    await _wait_for(lambda: replica.restarts >= 1, what="a failed start")
    await _wait_for(lambda: "/no/such/server" in env.plane.logs(env.workspace_id, "nocmd"), what="the log line")


@needs_podman
async def test_reap_removes_a_container_left_by_a_dead_control_plane(env: Env, image: str, tmp_path: Path) -> None:
    assert (await env.client.post("/v1/deployments", json=image_spec("left", image))).status_code == 201
    [replica] = _replicas(env, "left")
    await _wait_for(lambda: replica.ready, what="ready")
    assert replica.handle is not None and replica.handle.pid is not None
    name = container_name(replica.id)
    # What a restarted control plane does with the replica rows it finds.
    assert LocalBackend().reap(replica.handle.pid, replica.handle.pid_start)
    assert not container_exists(name)


@pytest.mark.parametrize("backend", [MemoryBackend()], ids=["no-containers"])
async def test_a_backend_without_containers_refuses_image_deployments(env: Env) -> None:
    refused = await env.client.post("/v1/deployments", json=image_spec("img", "localhost/any:1"))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_kind"


@needs_podman
async def test_secret_files_are_mounted_read_only_and_removed_with_the_container(env: Env, image: str) -> None:
    value = "container-secret-Value-7c1e"
    assert (await env.client.post("/v1/secrets", json={"name": "db", "value": value})).status_code == 201
    # The secrets are copied into a web root the test can read: what the container sees.
    command = (
        "trap 'exit 0' TERM; mkdir -p /tmp/www && cat /run/secrets/db/password /etc/app/token > /tmp/www/seen; "
        "(echo x > /run/secrets/db/password && echo writable || echo read-only) >> /tmp/www/seen; "
        "echo $TRAMONTANE_SECRETS_DIR >> /tmp/www/seen; httpd -f -p $PORT -h /tmp/www & wait"
    )
    files = {"db/password": {"secret": "db"}, "/etc/app/token": {"secret": "db"}}
    body = image_spec("vault", image, command=command, files=files)
    assert (await env.client.post("/v1/deployments", json=body)).status_code == 201
    seen = await env.client.get("/serve/vault/seen")
    assert seen.status_code == 200, seen.text
    assert seen.text.split("\n") == [value + value + "read-only", "/run/secrets", ""]
    [replica] = _replicas(env, "vault")
    mounts = inspect(container_name(replica.id), "{{range .Mounts}}{{.Source}} {{.RW}};{{end}}")
    sources = [m.split()[0] for m in mounts.split(";") if m]
    assert len(sources) == 2 and all(m.endswith(" false") for m in mounts.split(";") if m)
    assert all(Path(source).exists() for source in sources)
    assert value not in (await env.client.get("/v1/deployments/vault/logs")).text
    assert (await env.client.delete("/v1/deployments/vault")).status_code == 200
    await _wait_for(lambda: not any(Path(source).exists() for source in sources), what="the files' removal")
