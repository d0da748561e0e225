"""Tramontane: a sovereign AI compute platform."""

import os

# OpenMP workers that spin while waiting lose whole time slices whenever another thread
# or process wants the core (the HTTP event loop, a sandbox, a second replica): on a
# 2-core machine one decode step went from ~50 ms to over 1 s. Sleeping waiters cost
# far less. Must be set before torch loads libgomp; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
