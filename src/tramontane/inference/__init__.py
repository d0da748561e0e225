"""What the inference API and the agents share: the model registry, a chat request
made ready for the engine (`chat.prepare`), generation and its metering, the
OpenAI/Mistral request and response schemas, tool calls, structured output, and
the request path that bypasses FastAPI's per-request work (`fast_path`).

No routes live here (they are `tramontane.server`'s), and nothing here imports a
feature: the HTTP server and the agents both build on this layer."""

from .registry import ModelRegistry, ModelSpec, default_model_specs

__all__ = ["ModelRegistry", "ModelSpec", "default_model_specs"]
