"""Evaluations and red-teaming: measure a model, a fine-tune or an agent on the
workspace's own data before it ships.

An evaluation job runs a JSONL dataset (uploaded through the Files API) against
one or more targets (served models, `ft:` models, LoRA adapters, agents) and
scores every answer with the metrics it names; a red-team job runs the attack
families kept in `attacks/` against a model or an agent with its real tools.
Both run in the background, item by item, metered as the key that created them,
and resume where they stopped after a restart.

Import-light: `tramontane.platform.schema` imports `evaluations.models`. Import
`evaluations.service` (`Evaluations`), `evaluations.api` (`router`) and
`evaluations.cli` directly.
"""
