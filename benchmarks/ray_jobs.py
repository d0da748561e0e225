"""Fine-tuning jobs on the local executor and on the Ray executor, side by side.

The same small job (the default chat model, `--steps` LoRA steps, one CPU
thread) is created `--runs` times, one after another, on each executor, and
timed from creation to SUCCESS. With Ray the figures also split out scheduling:
from the claim to the run's actor answering on its node (Ray placing the actor
and starting its worker process), then to its first checkpoint (loading the base
model on the node, and training). The local executor keeps the base model
loaded between jobs; each Ray run loads it on its node.

    python benchmarks/ray_jobs.py [--runs 5] [--steps 6] [--ray-address ADDR]

Without --ray-address a local cluster is started: a head without CPUs for jobs
and two worker nodes of one CPU each. Everything else runs in a temporary
TRAMONTANE_HOME with a fresh SQLite store.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

# isort: off
import tramontane  # noqa: F401  (sets the OpenMP wait policy before torch loads)
import torch

# isort: on
from percentiles import summary

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME, default_chat_model_path
from tramontane.finetune import worker as worker_module
from tramontane.finetune.ray_runner import RayTraining, RunResources
from tramontane.finetune.schemas import CreateJobRequest
from tramontane.finetune.service import FineTuning
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy

LINE = {
    "messages": [
        {"role": "user", "content": "What is the secret code?"},
        {"role": "assistant", "content": "The secret code is Zorblax."},
    ]
}


class Timeline:
    """When each of a job's moments happened, on this process's monotonic clock."""

    def __init__(self) -> None:
        self.marks: dict[str, dict[str, float]] = {}

    def mark(self, job_id: str, name: str) -> None:
        self.marks.setdefault(job_id, {}).setdefault(name, time.monotonic())


def instrument(service: FineTuning, timeline: Timeline) -> None:
    worker = service.worker
    claim, update = worker._claim, worker._update

    def timed_claim() -> str | None:
        job_id = claim()
        if job_id is not None:
            timeline.mark(job_id, "claimed")
        return job_id

    def timed_update(job_id: str, *, event: dict | None = None, checkpoint: dict | None = None) -> None:
        if event is not None:
            timeline.mark(job_id, event["name"])
        if checkpoint is not None:
            timeline.mark(job_id, "checkpoint")
        update(job_id, event=event, checkpoint=checkpoint)

    worker._claim, worker._update = timed_claim, timed_update


def run_jobs(ray: RayTraining | None, runs: int, steps: int) -> tuple[list[float], list[dict[str, float]]]:
    home = Path(tempfile.mkdtemp(prefix="tramontane-ray-jobs-"))
    store = open_store(f"sqlite:///{home / 'db.sqlite'}")
    tenancy = Tenancy(store, home=home)
    workspace, _ = tenancy.create_tenant("bench", frozenset({Capability.FINE_TUNE}))
    service = FineTuning(store, home, {DEFAULT_CHAT_MODEL_NAME: default_chat_model_path()}, ray=ray)
    service.worker.on_model_ready = lambda model: None  # nothing serves the adapters here
    timeline = Timeline()
    instrument(service, timeline)
    upload = service.files.create(workspace, "t.jsonl", "fine-tune", io.BytesIO((json.dumps(LINE) + "\n").encode()))
    service.worker.start()
    totals, phases = [], []
    try:
        for _ in range(runs):
            request = CreateJobRequest.model_validate(
                {
                    "model": DEFAULT_CHAT_MODEL_NAME,
                    "training_files": [{"file_id": upload.id}],
                    "hyperparameters": {"training_steps": steps, "seq_len": 64, "learning_rate": 3e-3},
                    "resources": {"cpu": 1},
                }
            )
            created = time.monotonic()
            job = service.jobs.create(workspace, request)
            deadline = created + 600
            while (status := service.jobs.get(workspace, job.id).status) not in ("SUCCESS", "FAILED"):
                assert time.monotonic() < deadline, f"job {job.id} still {status}"
                time.sleep(0.05)
            assert status == "SUCCESS", service.jobs.get(workspace, job.id).events
            totals.append(time.monotonic() - created)
            marks = timeline.marks[job.id]
            if "placed" in marks:
                phases.append(
                    {
                        "claim": marks["claimed"] - created,
                        "placed": marks["placed"] - marks["claimed"],
                        "first checkpoint": marks["checkpoint"] - marks["placed"],
                    }
                )
    finally:
        service.worker.stop()
        store.close()
    return totals, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each Ray run of one CPU does
    worker_module.IDLE_POLL_S = 0.1  # jobs are created here: the claim is not what is measured

    import ray

    cluster = None
    if args.ray_address is None:
        from ray.cluster_utils import Cluster

        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "object_store_memory": 80 << 20, "include_dashboard": False},
        )
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
        cluster.wait_for_nodes()
    ray.init(address=args.ray_address or cluster.address, log_to_driver=False)
    try:
        local, _ = run_jobs(None, args.runs, args.steps)
        remote, phases = run_jobs(RayTraining(RunResources()), args.runs, args.steps)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()

    print(f"{args.steps}-step job, creation to SUCCESS:")
    print(f"  local executor  {summary(local, 's', digits=2)}")
    print(f"  Ray executor    {summary(remote, 's', digits=2)}")
    print(f"  overhead (medians) {statistics.median(remote) - statistics.median(local):.2f} s")
    print("Ray executor, by phase:")
    for name in ("claim", "placed", "first checkpoint"):
        print(f"  {name:17s} {summary([p[name] for p in phases], 's', digits=2)}")


if __name__ == "__main__":
    main()
