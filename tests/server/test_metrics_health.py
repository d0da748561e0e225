"""Probes and Prometheus metrics."""

from __future__ import annotations

import gc
import weakref

from fastapi.testclient import TestClient

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME as CHAT_MODEL
from tramontane.inference import ModelRegistry
from tramontane.platform.app import create_app
from tramontane.tenancy import Tenancy


def test_health_and_ready(http):
    # The platform's sandboxes here have an empty template store: no default template.
    assert http.get("/health").json() == {
        "status": "ok",
        "models": [],
        "warnings": [
            "sandboxes: the default template 'data' is not built on this server; "
            "sandboxes naming no template run on 'base' (the host's /usr)"
        ],
    }
    ready = http.get("/ready")
    assert ready.status_code == 200 and CHAT_MODEL in ready.json()["models"]


def test_metrics(http):
    http.post(
        "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    http.get("/v1/models/nope")
    text = http.get("/metrics").text
    assert 'tramontane_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    assert 'route="/v1/models/{model_id:path}",status="404"' in text
    for name in (
        "tramontane_prompt_tokens_total",
        "tramontane_completion_tokens_total",
        "tramontane_time_to_first_token_seconds_bucket",
        "tramontane_inter_token_latency_seconds_bucket",
        "tramontane_http_request_duration_seconds_bucket",
        "tramontane_requests_running",
        "tramontane_requests_waiting",
        "tramontane_kv_cache_usage_ratio",
        "tramontane_requests_shed_total",
        "tramontane_preemptions_total",
    ):
        assert f"{name}{{" in text, name


class _Node:
    """A reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_a_serving_app_keeps_its_heap_out_of_garbage_collection(tmp_path) -> None:
    tenancy = Tenancy.open(f"sqlite:///{tmp_path / 'db.sqlite'}", home=tmp_path)
    node = _Node()  # alive at start-up, like an engine
    alive = weakref.ref(node)
    try:
        with TestClient(create_app(ModelRegistry(), tenancy)):
            assert all(o is not node for o in gc.get_objects())  # frozen: collections skip it
            del node
            gc.collect()
            assert alive() is not None
        gc.collect()
        assert alive() is None  # thawed at shutdown
    finally:
        tenancy.close()
