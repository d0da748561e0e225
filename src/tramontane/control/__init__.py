"""Serverless control plane: deployments of commands or models, run as replicas
that are placed by resources, autoscaled on in-flight requests (down to zero and
back), health-checked, restarted, and reached through a proxying router.

Import-light: `tramontane.platform.schema` imports `control.models` for the
platform's tables. Import `control.plane`, `control.api`, `control.router` and
`control.cli` directly.
"""
