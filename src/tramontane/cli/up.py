"""`tramontane up`: load models, then serve the API."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

from ..engine import EngineConfig, ModelLoadError
from ..server import ModelRegistry, ModelSpec, create_app, default_model_specs

console = Console(stderr=True)


def up(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", metavar="[NAME=]PATH",
            help="A model to serve (GGUF file, HF or sentence-transformers folder); repeatable. "
            "Default: the bundled SmolLM2-135M-Instruct chat model and all-MiniLM-L6-v2 embeddings.",
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="TRAMONTANE_API_KEY", help="Require this bearer token on /v1.")
    ] = None,
    quantization: Annotated[
        str, typer.Option(help="Weight-only quantization of linear layers: auto, none, bf16, int8 or int4.")
    ] = "auto",
    kv_cache_gb: Annotated[float, typer.Option(help="Memory for each chat model's KV cache, in GiB.")] = 1.0,
    device: Annotated[str, typer.Option(help="Torch device for the chat models, e.g. cpu or cuda.")] = "cpu",
) -> None:
    """Serve the OpenAI- and Mistral-compatible API."""
    try:
        specs = [ModelSpec.parse(m) for m in model] if model else default_model_specs()
        config = EngineConfig(quantization=quantization, kv_cache_memory_gb=kv_cache_gb, device=device)
        registry = load_models(specs, config)
    except (ModelLoadError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    console.print(f"Serving {', '.join(registry.names())} on [bold]{url}[/] (OpenAI base_url: {url}/v1)")
    uvicorn.run(create_app(registry, api_key=api_key), host=host, port=port, log_level="info")


def load_models(specs: list[ModelSpec], engine_config: EngineConfig | None = None) -> ModelRegistry:
    registry = ModelRegistry()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for spec in specs:
            task = progress.add_task(f"Loading {spec.name or spec.path}", total=None)

            def on_progress(done: int, total: int, task=task) -> None:
                progress.update(task, completed=done, total=total)

            name = registry.load(spec, on_progress, engine_config)
            total = progress.tasks[task].total or 1
            progress.update(task, description=f"Loaded {name}", completed=total, total=total)
    return registry
