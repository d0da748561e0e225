"""A gateway in a process of its own, for the test that kills one: the
fine-tuning stack (no engines) on HOME, its jobs trained on the Ray cluster at
ADDRESS, a heartbeat taken as dead after STALE_S. Prints its URL, then serves
until killed.

    python ray_gateway.py HOME ADDRESS STALE_S
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import ray
from finetune_helpers import CHAT_MODEL, serve

from tramontane.engine.defaults import default_chat_model_path
from tramontane.finetune import worker
from tramontane.finetune.ray_runner import RayTraining, RunResources
from tramontane.inference import ModelRegistry


def main() -> None:
    home, address, stale_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    worker.STALE_AFTER_S = stale_s
    worker.IDLE_POLL_S = 0.2
    ray.init(address=address, log_to_driver=False)
    with serve(home, ModelRegistry(), {CHAT_MODEL: default_chat_model_path()}, ray=RayTraining(RunResources())) as server:
        print(server.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
