"""Fine-tuning jobs on a Ray cluster (the Ray job executor): a real local cluster
whose head has no CPU for jobs and whose two worker nodes have one CPU each, so
every run lands on a worker node, and a job of one CPU fills one.

The gateways are live servers (the fine-tuning stack on loopback, without
engines) driven over HTTP; what runs on Ray is the real training of the default
model for a few dozen short steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from finetune_helpers import CHAT_MODEL, FAST_HYPERPARAMETERS, TRAINING_LINE, Server, jsonl, serve, wait_for

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from tramontane.cli.up import load_models  # noqa: E402
from tramontane.engine.defaults import default_chat_model_path  # noqa: E402
from tramontane.finetune import ray_batch, ray_runner, worker  # noqa: E402
from tramontane.finetune.models import FineTuningJobRow  # noqa: E402
from tramontane.finetune.ray_batch import RayBatch, RayLines  # noqa: E402
from tramontane.finetune.ray_runner import NAMESPACE, RayTraining, RunResources, actor_name  # noqa: E402
from tramontane.inference import ModelRegistry, default_model_specs  # noqa: E402
from tramontane.store import open_store  # noqa: E402

_OBJECT_STORE_BYTES = 80 * 2**20
# Long enough to take a node away mid-run: 10 steps (under a second each here), a checkpoint every 2.
LONG_RUN = {**FAST_HYPERPARAMETERS, "training_steps": 10}
ONE_CPU = {"cpu": 1}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": _OBJECT_STORE_BYTES, "include_dashboard": False},
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=_OBJECT_STORE_BYTES)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "IDLE_POLL_S", 0.2)
    monkeypatch.setattr(ray_runner, "CHECK_S", 0.5)


@pytest.fixture
def gateway(cluster: Cluster, tmp_path: Path) -> Callable[[], Any]:
    """Starts a gateway whose fine-tuning jobs train on the cluster, on this test's home."""
    return lambda: serve(
        tmp_path, ModelRegistry(), {CHAT_MODEL: default_chat_model_path()}, ray=RayTraining(RunResources())
    )


def submit(server: Server, hyperparameters: dict[str, Any], resources: dict[str, Any] | None = None) -> str:
    with server.http(server.tenant("ray")) as http:
        file_id = http.post("/v1/files", files={"file": ("t.jsonl", jsonl(TRAINING_LINE))}).json()["id"]
        body = {"model": CHAT_MODEL, "training_files": [{"file_id": file_id}], "hyperparameters": hyperparameters}
        if resources is not None:
            body["resources"] = resources
        created = http.post("/v1/fine_tuning/jobs", json=body)
        assert created.status_code == 200, created.text
        return created.json()["id"]


def job(server: Server, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 180) -> dict[str, Any]:
    with server.http(server.tenant("ray")) as http:
        return wait_for(http, job_id, done, timeout)


def events(job: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e["data"] for e in reversed(job["events"]) if e["name"] == name]


def statuses(job: dict[str, Any]) -> list[str]:
    return [e["status"] for e in events(job, "status-updated")]


def node_of(cluster: Cluster, node_id: str) -> Any:
    return next(node for node in cluster.list_all_nodes() if node.node_id == node_id)


def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def no_actor(job_id: str) -> bool:
    try:
        ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return True
    return False


@pytest.mark.slow  # two runs, each starting a process and loading the model on its node
def test_a_job_whose_node_dies_resumes_from_its_checkpoint_on_another(cluster: Cluster, gateway) -> None:
    with gateway() as server:
        job_id = submit(server, LONG_RUN, ONE_CPU)
        running = job(server, job_id, lambda j: len(j["checkpoints"]) >= 1)
        [placed] = events(running, "placed")
        head = cluster.list_all_nodes()[0]
        assert placed["node"] != head.node_id  # the head offers no CPU to jobs
        assert placed["device"] == "cpu"
        cluster.remove_node(node_of(cluster, placed["node"]))
        done = job(server, job_id, lambda j: j["status"] in ("SUCCESS", "FAILED"))
        cluster.add_node(num_cpus=1, object_store_memory=_OBJECT_STORE_BYTES)  # back to two for the next tests

    assert done["status"] == "SUCCESS", done["events"]
    assert len(events(done, "node-lost")) == 1
    first, second = events(done, "placed")
    assert second["node"] != first["node"]
    [resumed] = events(done, "resumed")
    assert resumed["step_number"] >= 2 and resumed["node"] == second["node"]  # not from zero
    # Each checkpoint recorded once, whichever run wrote it.
    assert [c["step_number"] for c in reversed(done["checkpoints"])] == [2, 4, 6, 8, 10]
    assert statuses(done) == ["VALIDATING", "VALIDATED", "QUEUED", "RUNNING", "SUCCESS"]
    assert done["fine_tuned_model"].startswith(f"ft:{CHAT_MODEL}:")
    [(model_id, _, adapter, _)] = server.ready_models
    assert model_id == done["fine_tuned_model"] and (adapter / "adapter_model.safetensors").is_file()
    assert no_actor(job_id)


@pytest.mark.slow  # a gateway process of its own, then a takeover after a stale heartbeat
def test_a_gateway_killed_mid_job_takes_its_run_along_and_another_resumes_it(
    cluster: Cluster, gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale_s = 3.0
    monkeypatch.setattr(worker, "STALE_AFTER_S", stale_s)
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), *sys.path])}
    doomed = subprocess.Popen(
        [sys.executable, str(here / "ray_gateway.py"), str(tmp_path), cluster.address, str(stale_s)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert doomed.stdout is not None
        url = doomed.stdout.readline().strip()
        assert url.startswith("http://"), "the gateway did not start"
        first = Server(url, (tmp_path / "admin-key").read_text(), None)  # type: ignore[arg-type]
        job_id = submit(first, LONG_RUN, ONE_CPU)
        job(first, job_id, lambda j: len(j["checkpoints"]) >= 1)
    finally:
        doomed.kill()
        doomed.wait(timeout=30)
    # Its actor belonged to its Ray driver: Ray ends it, so nothing trains the job now.
    until(lambda: no_actor(job_id), timeout_s=60)
    with gateway() as second:
        done = job(second, job_id, lambda j: j["status"] in ("SUCCESS", "FAILED"))
    assert done["status"] == "SUCCESS", done["events"]
    assert len(events(done, "placed")) == 2 and not events(done, "adopted")
    [resumed] = events(done, "resumed")
    assert resumed["step_number"] >= 2
    assert [c["step_number"] for c in reversed(done["checkpoints"])] == [2, 4, 6, 8, 10]
    assert statuses(done) == ["VALIDATING", "VALIDATED", "QUEUED", "RUNNING", "SUCCESS"]


def test_a_cancelled_job_cancels_its_run(cluster: Cluster, gateway) -> None:
    with gateway() as server:
        job_id = submit(server, {**LONG_RUN, "training_steps": 1000}, ONE_CPU)
        job(server, job_id, lambda j: bool(events(j, "placed")))
        assert not no_actor(job_id)
        with server.http(server.tenant("ray")) as http:
            assert http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
        done = job(server, job_id, lambda j: j["status"] == "CANCELLED", timeout=60)
        until(lambda: no_actor(job_id))
        until(lambda: ray.available_resources().get("CPU") == 2)
    assert statuses(done)[-2:] == ["CANCELLATION_REQUESTED", "CANCELLED"]


def test_a_gateway_that_stops_ends_its_runs_and_queues_their_jobs(cluster: Cluster, gateway, tmp_path: Path) -> None:
    with gateway() as server:
        job_id = submit(server, {**LONG_RUN, "training_steps": 1000}, ONE_CPU)
        job(server, job_id, lambda j: bool(events(j, "placed")))
    until(lambda: no_actor(job_id))
    store = open_store(f"sqlite:///{tmp_path / 'tramontane.db'}")
    try:
        with store.session() as session:
            row = session.get(FineTuningJobRow, job_id)
            assert row is not None and row.status == "QUEUED"  # for any gateway to resume
            assert row.events[-1]["data"]["reason"] == "the server stopped"
    finally:
        store.close()


def test_a_job_no_node_can_run_waits_queued_until_one_joins(cluster: Cluster, gateway) -> None:
    with gateway() as server:
        job_id = submit(server, {**FAST_HYPERPARAMETERS, "training_steps": 4}, {"cpu": 1, "gpus": 1})
        waiting = job(server, job_id, lambda j: bool(events(j, "waiting")), timeout=30)
        time.sleep(1.0)  # several claims pass it over
        waiting = job(server, job_id, lambda j: True)
        assert waiting["status"] == "QUEUED" and waiting["resources"] == {"cpu": 1.0, "gpus": 1.0}
        [reason] = events(waiting, "waiting")  # noted once
        assert "no Ray node has 1 CPU, 1 GPU" in reason["reason"]
        # A GPU node joins (Ray takes the operator's word for its GPU): the job runs there.
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=_OBJECT_STORE_BYTES)
        try:
            done = job(server, job_id, lambda j: j["status"] in ("SUCCESS", "FAILED"))
        finally:
            cluster.remove_node(gpu_node)
    assert done["status"] == "SUCCESS", done["events"]
    [placed] = events(done, "placed")
    assert placed["node"] == gpu_node.node_id


@pytest.mark.slow  # a GPU node joins, leaves mid-run, and joins again
def test_a_running_job_whose_only_fitting_node_leaves_goes_back_to_the_queue(cluster: Cluster, gateway) -> None:
    with gateway() as server:
        job_id = submit(server, LONG_RUN, {"cpu": 1, "gpus": 1})
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=_OBJECT_STORE_BYTES)
        job(server, job_id, lambda j: len(j["checkpoints"]) >= 1)
        cluster.remove_node(gpu_node)
        requeued = job(server, job_id, lambda j: j["status"] == "QUEUED", timeout=60)
        assert "no Ray node has 1 CPU, 1 GPU" in requeued["events"][0]["data"]["reason"]  # newest first
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=_OBJECT_STORE_BYTES)
        try:
            done = job(server, job_id, lambda j: j["status"] in ("SUCCESS", "FAILED"))
        finally:
            cluster.remove_node(gpu_node)
    assert done["status"] == "SUCCESS", done["events"]
    [resumed] = events(done, "resumed")
    assert resumed["step_number"] >= 2 and resumed["node"] == gpu_node.node_id
    assert [c["step_number"] for c in reversed(done["checkpoints"])] == [2, 4, 6, 8, 10]
    assert statuses(done)[-4:] == ["RUNNING", "QUEUED", "RUNNING", "SUCCESS"]


@pytest.mark.slow  # waits out a stale heartbeat while the run trains on
def test_a_gateway_that_takes_over_adopts_the_run_instead_of_doubling_it(
    cluster: Cluster, gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heartbeat older than 3 s is a dead claimer's; the claimer's lease runs as long.
    monkeypatch.setattr(worker, "STALE_AFTER_S", 3.0)
    paused = threading.Event()
    with gateway() as first:
        job_id = submit(first, {**LONG_RUN, "training_steps": 16}, ONE_CPU)
        job(first, job_id, lambda j: bool(events(j, "placed")))
        # The first gateway stalls (paused, or cut off from the database): it neither
        # renews nor records, but its actor trains on.
        original = first.service.worker._heartbeat

        def stalled(job_id: str) -> Any:
            paused.wait(120)
            return original(job_id)

        monkeypatch.setattr(first.service.worker, "_heartbeat", stalled)
        with gateway() as second:
            done = job(second, job_id, lambda j: j["status"] in ("SUCCESS", "FAILED"))
            paused.set()  # the first comes back, finds its lease gone, and lets the run be
            time.sleep(1.5)
            after = job(second, job_id, lambda j: True)
    assert done["status"] == "SUCCESS", done["events"]
    assert len(events(done, "placed")) == 1 and len(events(done, "adopted")) == 1
    assert not events(done, "node-lost") and not events(done, "resumed")  # one run, never restarted
    assert [c["step_number"] for c in reversed(done["checkpoints"])] == [4, 8, 12, 16]
    assert after["events"] == done["events"] and after["status"] == "SUCCESS"
    assert no_actor(job_id)


def test_resources_are_checked_and_default_to_the_operators(cluster: Cluster, gateway) -> None:
    defaults = RunResources(cpu=2, gpus=0.5)
    assert defaults.with_asked({"gpus": 1}) == RunResources(cpu=2, gpus=1)
    assert defaults.with_asked(None).actor_options() == {"num_cpus": 2, "num_gpus": 0.5}
    assert RunResources(memory_mb=512).actor_options()["memory"] == 512 * 2**20
    assert not RunResources(cpu=1, gpus=1).fits({"CPU": 8.0}) and RunResources(cpu=1).fits({"CPU": 1.0})
    with gateway() as server, server.http(server.tenant("ray")) as http:
        file_id = http.post("/v1/files", files={"file": ("t.jsonl", jsonl(TRAINING_LINE))}).json()["id"]
        body = {"model": CHAT_MODEL, "training_files": [{"file_id": file_id}], "auto_start": False}
        for bad in ({"gpus": -1}, {"cpu": 0}, {"memory_mb": 0}, {"cpu": "many"}):
            refused = http.post("/v1/fine_tuning/jobs", json={**body, "resources": bad})
            assert refused.status_code == 422, (bad, refused.text)
        created = http.post("/v1/fine_tuning/jobs", json={**body, "resources": {"cpu": 2, "memory_mb": 1024}}).json()
        assert created["status"] == "VALIDATED" and created["resources"] == {"cpu": 2.0, "memory_mb": 1024}
        assert "resources" not in http.post("/v1/fine_tuning/jobs", json=body).json()


def batch_line(n: int) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": f"Count from {n}:"}], "max_tokens": 24, "temperature": 0}
    return {"custom_id": str(n), "body": body}


def create_batch(http: Any, count: int) -> str:
    """A chat batch job of `count` lines; its URL."""
    upload = http.post("/v1/files", files={"file": ("b.jsonl", jsonl(*map(batch_line, range(count))))},
                       data={"purpose": "batch"}).json()  # fmt: skip
    created = http.post(
        "/v1/batch/jobs", json={"input_files": [upload["id"]], "endpoint": "/v1/chat/completions", "model": CHAT_MODEL}
    ).json()
    return f"/v1/batch/jobs/{created['id']}"


@pytest.fixture
def started_lines(monkeypatch: pytest.MonkeyPatch) -> list[RayLines]:
    """Each batch or evaluation job's lines on Ray, as the gateway starts them."""
    started: list[RayLines] = []
    lines_of = RayBatch.lines

    def recorded(self: RayBatch, job_id: str) -> RayLines:
        started.append(lines_of(self, job_id))
        return started[-1]

    monkeypatch.setattr(RayBatch, "lines", recorded)
    return started


@pytest.mark.slow  # loads the chat model on a node, twice
def test_batch_lines_run_on_a_ray_node_and_fail_over_when_it_dies(
    cluster: Cluster, gateway, started_lines: list[RayLines]
) -> None:
    count = 24
    # The gateway loads no engine: only a Ray node can answer these lines.
    with gateway() as server, server.http(server.tenant("ray")) as http:
        url = create_batch(http, count)
        until(lambda: (j := http.get(url).json())["completed_requests"] >= 1 or j["status"] == "FAILED", timeout_s=120)
        assert http.get(url).json()["status"] == "RUNNING"
        [lines] = started_lines
        first = lines.nodes[0]
        assert first != cluster.list_all_nodes()[0].node_id
        cluster.remove_node(node_of(cluster, first))
        until(lambda: http.get(url).json()["status"] in ("SUCCESS", "FAILED"), timeout_s=180)
        done = http.get(url).json()
        cluster.add_node(num_cpus=1, object_store_memory=_OBJECT_STORE_BYTES)
        results = [json.loads(line) for line in http.get(f"/v1/files/{done['output_file']}/content").text.splitlines()]
    assert done["status"] == "SUCCESS", done
    assert (done["succeeded_requests"], done["failed_requests"]) == (count, 0)
    assert [r["custom_id"] for r in results] == [str(n) for n in range(count)]  # each line once
    assert all(r["response"]["body"]["choices"][0]["message"]["content"] for r in results)
    assert len(lines.nodes) == 2 and lines.nodes[1] != first  # the lines in flight went on elsewhere


@pytest.mark.slow  # a GPU node joins, leaves under the lines, and joins again
def test_batch_lines_wait_while_their_only_fitting_node_is_away(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_batch, "NODE_POLL_S", 0.2)
    count = 20  # past the runner's 8 at once: lines are left when the node goes
    gpu_job = RayTraining(RunResources(cpu=1, gpus=1))
    gpu_node = None
    with serve(tmp_path, ModelRegistry(), {CHAT_MODEL: default_chat_model_path()}, ray=gpu_job) as server, \
            server.http(server.tenant("ray")) as http:  # fmt: skip
        url = create_batch(http, count)
        time.sleep(1.5)  # no GPU node yet: the lines wait, none fails
        waiting = http.get(url).json()
        assert waiting["status"] == "RUNNING" and waiting["failed_requests"] == 0, waiting
        try:
            gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=_OBJECT_STORE_BYTES)
            until(lambda: (j := http.get(url).json())["completed_requests"] >= 1 or j["status"] == "FAILED", 120)
            cluster.remove_node(gpu_node)
            time.sleep(1.5)  # its only fitting node gone: the rest wait again
            assert http.get(url).json()["status"] == "RUNNING"
            gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=_OBJECT_STORE_BYTES)
            until(lambda: http.get(url).json()["status"] in ("SUCCESS", "FAILED"), timeout_s=180)
        finally:
            if gpu_node is not None:
                cluster.remove_node(gpu_node)
        done = http.get(url).json()
    assert done["status"] == "SUCCESS", done
    assert (done["succeeded_requests"], done["failed_requests"]) == (count, 0)


def test_an_evaluations_model_calls_run_on_its_ray_actor(
    cluster: Cluster, tmp_path: Path, started_lines: list[RayLines]
) -> None:
    registry = load_models([s for s in default_model_specs() if s.name == CHAT_MODEL])
    items = [{"input": f"Write the number {i} in words.", "reference": str(i)} for i in range(6)]
    with serve(tmp_path, registry, registry.checkpoints(), ray=RayTraining(RunResources())) as server, server.http(
        server.tenant("ray")
    ) as http:
        dataset = http.post("/v1/files", files={"file": ("d.jsonl", jsonl(*items))}, data={"purpose": "evals"})
        body = {"dataset": dataset.json()["id"], "targets": [{"model": CHAT_MODEL}], "metrics": [{"type": "chrf"}],
                "completion_args": {"max_tokens": 12}}
        created = http.post("/v1/evaluations", json=body)
        assert created.status_code in (200, 201), created.text
        url = f"/v1/evaluations/{created.json()['id']}"
        until(lambda: http.get(url).json()["status"] in ("SUCCESS", "FAILED"), timeout_s=180)
        done = http.get(url).json()
    assert done["status"] == "SUCCESS", done["events"]
    assert (done["completed_items"], done["failed_items"]) == (6, 0)
    [lines] = started_lines
    assert len(lines.nodes) == 1 and lines.nodes[0] != cluster.list_all_nodes()[0].node_id
    until(lambda: ray.available_resources().get("CPU") == 2)  # its actor ended with the job
