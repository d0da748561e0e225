"""Tramontane's OpenAI- and Mistral-compatible HTTP API."""

from .app import create_app
from .registry import ModelRegistry, ModelSpec, default_model_specs

__all__ = ["ModelRegistry", "ModelSpec", "create_app", "default_model_specs"]
