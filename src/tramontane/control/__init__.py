"""Serverless control plane: deployments of commands or models, run as replicas
that are placed by resources, autoscaled on in-flight requests (down to zero and
back), health-checked, restarted, and reached through a proxying router.

Deliberately import-light: `tramontane.store` imports `control.models` so that
the store's metadata knows these tables, and anything heavier here would make
that import circular. Import `control.plane`, `control.api`, `control.router`
and `control.cli` directly.
"""
