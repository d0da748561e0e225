"""Constrained decoding (JSON mode, JSON schema, forced tool calls) with llguidance.

llguidance compiles a schema or Lark grammar into a matcher that yields, per step,
the set of tokens that keep the output valid. Grammars are compiled and checked
once per request; each sequence then gets a cheap copy of the compiled matcher.

JSON is generated on one line with ", " and ": " separators unless the schema's
own "x-guidance" settings say otherwise: free whitespace lets small models loop
on newlines forever. A schema sent without `"strict": true` is compiled leniently
(keywords llguidance does not implement are ignored rather than refused), which
matches OpenAI's best-effort meaning of non-strict schemas.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import llguidance
import llguidance.numpy
import numpy as np
import torch

from tramontane.engine.errors import EngineError, InvalidRequestError
from tramontane.engine.sampling_params import TokenConstraint

from .mistral_tool_calls import ARGS as MISTRAL_ARGS
from .mistral_tool_calls import TOOL_CALLS as MISTRAL_TOOL_CALLS
from .tool_calls import TOOL_CALL_PREFIX, TOOL_CALL_SEPARATOR, TOOL_CALL_SUFFIX

logger = logging.getLogger(__name__)

_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class GrammarTokenizer(Protocol):
    """The part of tramontane's Tokenizer that grammars need."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_ids(self) -> set[int]: ...

    def to_json_str(self) -> str: ...

    @property
    def tool_call_format(self) -> str: ...


class GrammarConstraint:
    """A TokenConstraint backed by one llguidance matcher (one per sequence)."""

    def __init__(self, matcher: llguidance.LLMatcher, tokenizer_vocab: int):
        self._matcher = matcher
        self._vocab = tokenizer_vocab
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, tokenizer_vocab)

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        # llguidance allows the EOS tokens itself whenever the grammar may end.
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        n = min(vocab_size, self._vocab)
        # numpy end to end: small torch ops cost far more dispatch time than the work.
        allowed = np.zeros(vocab_size, dtype=np.bool_)  # padding rows stay False
        allowed[:n] = np.unpackbits(self._bitmask.view(np.uint8), count=n, bitorder="little").view(np.bool_)
        return torch.from_numpy(allowed)

    def accept(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id):
            raise EngineError(f"token {token_id} was rejected by the grammar: {self._matcher.get_error()}")

    def is_finished(self) -> bool:
        # Stopped means nothing but EOS may follow (or the matcher failed).
        return self._matcher.is_stopped()


def _ll_tokenizer(tokenizer: GrammarTokenizer) -> llguidance.LLTokenizer:
    spec = json.loads(tokenizer.to_json_str())
    # tokenizer.json may carry training-time truncation and padding; llguidance
    # tokenizes grammar literals with this tokenizer and needs neither.
    spec["truncation"] = None
    spec["padding"] = None
    eos = sorted(tokenizer.eos_token_ids)
    return llguidance.LLTokenizer(json.dumps(spec), n_vocab=tokenizer.vocab_size, eos_token=eos or None)


class GrammarCompiler:
    """Turns response_format / tool_choice into constraint factories for one model."""

    def __init__(self, tokenizer: GrammarTokenizer, cache_size: int = 32):
        self._vocab = tokenizer.vocab_size
        # llguidance's view of the vocabulary takes about a second to build and holds
        # the GIL throughout, so built on a background thread it stalled whatever ran
        # beside it: on a replica woken from zero, its first tokens. It is built when
        # the first constrained request needs it instead.
        self._tokenizer = tokenizer
        self._tool_format = tokenizer.tool_call_format
        self._ll_lock = threading.Lock()
        self._ll: llguidance.LLTokenizer | None = None
        # Clients tend to resend the same schema; compiling a large one takes a while.
        self._compile = functools.lru_cache(maxsize=cache_size)(self._compile_uncached)

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._ll_lock:
            if self._ll is None:
                self._ll = _ll_tokenizer(self._tokenizer)
            return self._ll

    def constraint_factory(
        self,
        response_format: dict | None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
        *,
        parallel_tool_calls: bool = True,
    ) -> Callable[[], TokenConstraint] | None:
        """A factory of fresh constraints, or None when the output is free text.

        A tool_choice that forces a call ("required", Mistral's "any", or a named
        function) wins over response_format: the output then is tool calls only.
        Raises InvalidRequestError for schemas or choices that cannot be honoured.
        """
        forced = _forced_tools(tools, tool_choice)
        if forced is not None:
            many = parallel_tool_calls and not isinstance(tool_choice, dict)
            grammar = llguidance.LLMatcher.grammar_from_lark(_tool_call_lark(forced, many, self._tool_format))
            return self._factory(grammar, "tools")
        schema = _response_schema(response_format)
        if schema is None:
            return None
        return self._factory(self._json_grammar(schema, _is_strict(response_format)), "response_format")

    def choice_factory(self, options: tuple[str, ...]) -> Callable[[], GrammarConstraint]:
        """A factory of constraints that let the output be exactly one of `options`
        (a verdict: "yes" or "no"), nothing before or after it."""
        lark = "start: " + " | ".join(json.dumps(option) for option in options)
        return self._factory(llguidance.LLMatcher.grammar_from_lark(lark), "choice")

    def _json_grammar(self, schema: dict, strict: bool) -> str:
        try:
            defaults = {**_JSON_STYLE, "lenient": not strict}
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=defaults)
        except ValueError as exc:
            raise InvalidRequestError(f"invalid JSON schema: {exc}", param="response_format") from exc

    def _factory(self, grammar: str, param: str) -> Callable[[], GrammarConstraint]:
        template = self._compile(grammar)
        if template.is_error():
            raise InvalidRequestError(f"invalid {param} schema: {template.get_error()}", param=param)
        vocab = self._vocab
        return lambda: GrammarConstraint(template.deep_copy(), vocab)

    def _compile_uncached(self, grammar: str) -> llguidance.LLMatcher:
        # Matchers report grammar errors through is_error() instead of raising.
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        for warning in matcher.get_grammar_warnings():
            logger.debug("grammar warning: %s", warning)
        return matcher


def _response_schema(response_format: dict | None) -> dict | None:
    if response_format is None:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return _ANY_OBJECT
    if kind != "json_schema":
        raise InvalidRequestError(f"unsupported response_format type {kind!r}", param="response_format")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequestError("response_format.json_schema.schema must be a JSON object", param="response_format")
    return schema


def _is_strict(response_format: dict | None) -> bool:
    spec = (response_format or {}).get("json_schema")
    return bool(isinstance(spec, dict) and spec.get("strict"))


def _forced_tools(tools: list[dict] | None, tool_choice: str | dict | None) -> list[dict] | None:
    """The function definitions one of which must be called, or None if calls are optional."""
    if tool_choice is None or tool_choice in ("auto", "none"):
        return None
    functions = [tool["function"] for tool in tools or [] if isinstance(tool.get("function"), dict)]
    if any(not isinstance(f.get("name"), str) for f in functions):
        raise InvalidRequestError("every tool needs a function name", param="tools")
    if tool_choice in ("required", "any"):
        if not functions:
            raise InvalidRequestError(f"tool_choice {tool_choice!r} needs at least one tool", param="tool_choice")
        return functions
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise InvalidRequestError(f"tool_choice names unknown function {name!r}", param="tool_choice")
        return chosen[:1]
    raise InvalidRequestError(f"unsupported tool_choice {tool_choice!r}", param="tool_choice")


def _tool_call_lark(functions: list[dict], many: bool, tool_format: str = "hermes") -> str:
    """Lark grammar for tool calls in the model's format: tool-call blocks as
    tool_calls.py parses them, or Mistral's (mistral_tool_calls.py).

    The call object lists "name" before "arguments" (llguidance keeps schema
    property order), so streaming clients learn the function name first.
    """
    if tool_format == "mistral_args":
        return _mistral_args_lark(functions, many)
    rules = []
    for i, function in enumerate(functions):
        parameters = dict(function.get("parameters") or _ANY_OBJECT)
        # "#/$defs/..." references resolve from the document root, which is now the call object.
        definitions = {key: parameters.pop(key) for key in ("$defs", "definitions") if key in parameters}
        call_schema = {
            "type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
            "x-guidance": {**_JSON_STYLE, "lenient": not function.get("strict", False)},
            **definitions,
        }
        rules.append(f"fn_{i}: %json {json.dumps(call_schema)}")
    alternatives = " | ".join(f"fn_{i}" for i in range(len(functions)))
    if tool_format == "mistral_json":  # [TOOL_CALLS][{...}, {...}]
        repeat = ' (", " call)*' if many else ""
        return "\n".join(
            # SentencePiece vocabularies spell a word-initial "[" with a space ("▁[").
            [f'start: {json.dumps(MISTRAL_TOOL_CALLS)} " "? "[" call{repeat} "]"', f"call: {alternatives}", *rules]
        )
    repeat = f" ({json.dumps(TOOL_CALL_SEPARATOR)} call)*" if many else ""
    return "\n".join(
        [
            f"start: call{repeat}",
            f"call: {json.dumps(TOOL_CALL_PREFIX)} ({alternatives}) {json.dumps(TOOL_CALL_SUFFIX)}",
            *rules,
        ]
    )


def _mistral_args_lark(functions: list[dict], many: bool) -> str:
    """[TOOL_CALLS]name[ARGS]{arguments}, once or repeated (tokenizers v11 on)."""
    rules = []
    for i, function in enumerate(functions):
        parameters = dict(function.get("parameters") or _ANY_OBJECT)
        parameters["x-guidance"] = {**_JSON_STYLE, "lenient": not function.get("strict", False)}
        head = json.dumps(MISTRAL_TOOL_CALLS + function["name"] + MISTRAL_ARGS)
        rules.append(f"fn_{i}: {head} args_{i}")
        rules.append(f"args_{i}: %json {json.dumps(parameters)}")
    alternatives = " | ".join(f"fn_{i}" for i in range(len(functions)))
    return "\n".join([f"start: call{'+' if many else ''}", f"call: {alternatives}", *rules])
