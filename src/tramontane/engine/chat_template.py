"""Rendering a model's jinja2 chat template the way transformers does.

Templates come from model files, so they run in jinja2's immutable sandbox with
only the helpers HF templates expect: `raise_exception`, `strftime_now`, a
`tojson` that takes `indent` and leaves non-ASCII and HTML characters alone, the
`loopcontrols` extension and a pass-through `{% generation %}` block.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tramontane.engine.errors import InvalidRequestError

# What a model without a template of its own gets.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training
    masks in transformers; rendering just keeps its body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def render_chat_template(
    source: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
    variables: dict[str, Any],
) -> str:
    """Render `source`; any failure, the template's own `raise_exception` included,
    is the request's fault (bad roles, bad content types) and so an InvalidRequestError."""
    messages = [_with_object_arguments(m) for m in messages]
    try:
        return _compile(source).render(
            {**variables, "messages": messages, "tools": tools, "add_generation_prompt": add_generation_prompt}
        )
    except jinja2.TemplateError as e:
        raise InvalidRequestError(f"chat template error: {e}", param="messages") from e
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise InvalidRequestError(f"chat template could not render these messages: {e}", param="messages") from e


def _with_object_arguments(message: dict[str, Any]) -> dict[str, Any]:
    """`message` with its tool calls' JSON-string arguments as objects, as transformers
    documents them for templates: most write them with `tojson` (Qwen 2.5, Llama 3.1,
    Mistral's HF templates), which would encode a string a second time, and Qwen3's
    writes an object in its own trained spacing. Arguments that are no JSON object stay
    as they are."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    return {**message, "tool_calls": [_object_arguments(call) for call in calls]}


def _object_arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except json.JSONDecodeError:
        return call
    if not isinstance(arguments, dict):
        return call
    return {**call, "function": {**function, "arguments": arguments}}
