"""The standby interpreter: pre-started with torch and the server imported, it runs
the `tramontane` command it is handed, with that environment and log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tramontane.control.backends.local import inherited_env
from tramontane.control.backends.standby import Standby, can_start_warm


def test_startup_variables_force_a_cold_start() -> None:
    assert can_start_warm({}) and can_start_warm({"HF_HOME": "/x", "MY_SETTING": "1"})
    for name in ("OMP_NUM_THREADS", "LD_PRELOAD", "PYTHONPATH", "TORCH_HOME", "CUDA_VISIBLE_DEVICES"):
        assert not can_start_warm({name: "1"})


async def test_standby_runs_the_command_it_is_handed(tmp_path: Path) -> None:
    standby = Standby(inherited_env)
    try:
        assert await standby.take(["--help"], {}, tmp_path / "none.log") is None  # none started yet
        await standby.start()
        deadline = time.monotonic() + 120
        while not standby.ready:
            assert time.monotonic() < deadline, "the standby never finished its imports"
            await asyncio.sleep(0.05)
        log = tmp_path / "replica.log"
        started = time.perf_counter()
        process = await standby.take(["tenancy", "--help"], {"COLUMNS": "200"}, log)
        assert process is not None
        assert await process.wait() == 0
        print(f"\ncommand run from the standby in {(time.perf_counter() - started) * 1000:.0f} ms")
        assert "Usage: tramontane tenancy" in " ".join(log.read_text().split())
        # Taken, it is gone: the next start is cold until the refill is ready.
        assert not standby.ready
    finally:
        await standby.close()
