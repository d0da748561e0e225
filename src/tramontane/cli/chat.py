"""`tramontane chat`: a terminal chat against a running server, streamed."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from .sse import DONE, error_message, parse_line

console = Console(highlight=False)

Url = Annotated[str, typer.Option(help="Base URL of a running Tramontane server.")]
ApiKey = Annotated[
    str | None, typer.Option(envvar="TRAMONTANE_API_KEY", help="An API key with the inference capability.")
]


def client(url: str, api_key: str | None, timeout: float | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def first_chat_model(http: httpx.Client) -> str:
    response = http.get("/v1/models")
    if response.status_code in (401, 403):
        console.print(f"[red]{error_message(response.json())}[/] (pass --api-key or set TRAMONTANE_API_KEY)")
        raise typer.Exit(1)
    response.raise_for_status()
    for card in response.json()["data"]:
        if card.get("capabilities", {}).get("completion_chat"):
            return card["id"]
    raise typer.BadParameter("the server has no chat model")


def chat(
    url: Url = "http://127.0.0.1:8000",
    model: Annotated[str | None, typer.Option(help="Model name; default: the server's first chat model.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Limit on each answer's length.")] = None,
    api_key: ApiKey = None,
) -> None:
    """Chat with a model in the terminal (/reset clears the history, /exit or Ctrl-D quits)."""
    with client(url, api_key) as http:
        try:
            model = model or first_chat_model(http)
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot reach {url}:[/] {exc}")
            raise typer.Exit(1) from exc
        console.print(f"[dim]Chatting with {model} at {url}. /reset clears the history, /exit quits.[/]")
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        while True:
            try:
                prompt = console.input("[bold cyan]you>[/] ").strip()
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if prompt == "/exit":
                return
            if prompt == "/reset":
                history = history[:1] if system else []
                continue
            if not prompt:
                continue
            history.append({"role": "user", "content": prompt})
            body = {
                "model": model,
                "messages": history,
                "stream": True,
                "temperature": temperature,
                "max_tokens": max_tokens,
            }
            answer = _stream_answer(http, {k: v for k, v in body.items() if v is not None})
            if answer is None:
                history.pop()
            else:
                history.append({"role": "assistant", "content": answer})


def _stream_answer(http: httpx.Client, body: dict[str, Any]) -> str | None:
    """Prints the answer as it streams in; None if the request failed."""
    parts: list[str] = []
    console.print("[bold magenta]bot>[/] ", end="")
    try:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                console.print(f"[red]{response.status_code}: {error_message(response.json())}[/]")
                return None
            for line in response.iter_lines():
                event = parse_line(line)
                if event is DONE:
                    break
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    console.print(f"\n[red]{error_message(event)}[/]")
                    return None
                for choice in event.get("choices", []):
                    text = choice.get("delta", {}).get("content") or ""
                    parts.append(text)
                    console.print(text, end="", markup=False)
    except KeyboardInterrupt:
        console.print("[dim] (interrupted)[/]")  # leaving the with-block closes the stream: the server aborts
    except httpx.HTTPError as exc:
        console.print(f"\n[red]connection error: {exc}[/]")
        return None
    console.print()
    return "".join(parts)
