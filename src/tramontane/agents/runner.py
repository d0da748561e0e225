"""The conversation loop: call the model, run the server's tools, hand off between
agents, and stop when the model answers or a client function must run.

A run is an async iterator of stream events; every entry it makes is saved (when
the conversation is stored) as soon as it is complete, so a client that hangs up
keeps everything that happened before.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..errors import Invalid, as_api_error
from ..inference.protocol import ChatCompletionRequest
from ..inference.tool_calls import ContentDelta
from ..store.types import new_id
from . import entries
from .backend import ChatBackend, ModelTurn
from .entries import Stored
from .libraries import Libraries
from .schemas import Agent, Usage
from .tools import (
    CODE_INTERPRETER,
    DOCUMENT_LIBRARY,
    TOOL_DEFINITIONS,
    ConversationSandboxes,
    ToolOutcome,
    parse_arguments,
    search_documents,
)

# Model calls per run: a model that keeps calling tools is stopped, not billed for ever.
MAX_STEPS = 8
HANDOFF_PREFIX = "handoff_to_"
_CITATION = re.compile(r"\[(\d+)\]")


@dataclass
class Speaker:
    """Whoever answers: an agent (one version of it) or a bare model."""

    model: str
    instructions: str | None
    tools: list[dict[str, Any]]
    completion_args: dict[str, Any]
    agent_id: str | None = None
    name: str = ""
    handoffs: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, agent: Agent) -> Speaker:
        return cls(
            agent.model,
            agent.instructions,
            agent.tools,
            agent.completion_args,
            agent.id,
            agent.name,
            agent.handoffs or [],
        )


@dataclass
class RunContext:
    backend: ChatBackend
    sandboxes: ConversationSandboxes
    libraries: Libraries
    workspace_id: str
    conversation_id: str
    save: Callable[[Stored], Awaitable[None]]  # persists one finished entry
    find_agent: Callable[[str], Agent]  # a handoff target of the workspace


class Run:
    def __init__(self, ctx: RunContext, speaker: Speaker, history: list[Stored], completion_args: dict[str, Any]):
        self._ctx = ctx
        self._speaker = speaker
        self._history = history
        self._args_override = completion_args
        self.outputs: list[dict[str, Any]] = []
        self.turns: list[ModelTurn] = []  # for metering
        self._files: list[dict[str, Any]] = []
        self._passages: list[Any] = []

    @property
    def usage(self) -> Usage:
        prompt = sum(t.prompt_tokens for t in self.turns if t.started)
        completion = sum(t.completion_tokens for t in self.turns if t.started)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    async def _add(self, stored: Stored, output: bool = True) -> None:
        self._history.append(stored)
        if output:
            self.outputs.append(stored.body)
        await self._ctx.save(stored)

    async def add_inputs(self, inputs: list[Stored]) -> None:
        for stored in inputs:
            await self._add(stored, output=False)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Stream events; a failure ends it with conversation.response.error."""
        yield entries.event("conversation.response.started", conversation_id=self._ctx.conversation_id)
        try:
            for _ in range(MAX_STEPS):
                calls: list[dict[str, str]] = []
                async for event in self._model_step(calls):
                    yield event
                if not calls:
                    break
                client_turn = False
                for call in calls:
                    async for event in self._run_call(call):
                        yield event
                    client_turn = client_turn or self._is_function(call["name"])
                if client_turn:
                    break  # the client runs its functions and appends their results
        except Exception as exc:  # the stream is open: report in-band
            error = as_api_error(exc)
            yield entries.event("conversation.response.error", message=error.message, code=error.status)
            return
        yield entries.event("conversation.response.done", usage=self.usage.model_dump())

    # -- one model call

    def _tool_definitions(self) -> list[dict[str, Any]]:
        tools = []
        for tool in self._speaker.tools:
            if tool["type"] == "function":
                tools.append({"type": "function", "function": tool["function"]})
            else:
                tools.append({"type": "function", "function": TOOL_DEFINITIONS[tool["type"]]})
        for agent_id in self._speaker.handoffs:
            target = self._ctx.find_agent(agent_id)
            about = f": {target.description}" if target.description else ""
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": HANDOFF_PREFIX + agent_id,
                        "description": f"Hands the conversation to the agent '{target.name}'{about}",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
            )
        return tools

    def _request(self) -> ChatCompletionRequest:
        speaker = self._speaker
        messages = entries.to_messages(self._history)
        if speaker.instructions:
            messages.insert(0, {"role": "system", "content": speaker.instructions})
        args = {**speaker.completion_args, **self._args_override}
        body: dict[str, Any] = {"model": speaker.model, "messages": messages, **args}
        tools = self._tool_definitions()
        if tools:
            body["tools"] = tools
        if args.get("response_format") is None:
            body.pop("response_format", None)
        if not messages:  # e.g. a restart from the first entry with no inputs
            raise Invalid("The conversation has nothing to answer: give it inputs", param="inputs")
        return ChatCompletionRequest.model_validate(body)

    async def _model_step(self, calls: list[dict[str, str]]) -> AsyncIterator[dict[str, Any]]:
        speaker = self._speaker
        turn = self._ctx.backend.turn(self._request(), self._ctx.workspace_id)
        self.turns.append(turn)
        await turn.start()
        parser = turn.tool_call_parser()
        message_id = new_id("msg")
        content: list[str] = []
        output_index = len(self.outputs)
        try:
            async for text in turn.text():
                for event in parser.feed(text):
                    out = self._absorb(event, message_id, content, calls, output_index)
                    if out is not None:
                        yield out
            for event in parser.finish():
                out = self._absorb(event, message_id, content, calls, output_index)
                if out is not None:
                    yield out
        except (asyncio.CancelledError, GeneratorExit):
            # The client left: the generation stops here (turn.close aborts it), and a
            # stored conversation keeps the answer as far as it got, metered as such.
            with anyio.CancelScope(shield=True):
                await turn.close()
                if content and not calls:
                    partial = entries.message_output(
                        message_id, "".join(content), speaker.model, speaker.agent_id, completed=False
                    )
                    await self._add(Stored(partial))
            raise
        finally:
            await turn.close()
        answer = "".join(content)
        chunks = self._attachments(answer) if not calls else []
        for k, chunk in enumerate(chunks):
            yield entries.event(
                "message.output.delta",
                id=message_id,
                content=chunk,
                output_index=output_index,
                content_index=k + 1,
                model=speaker.model,
                agent_id=speaker.agent_id,
            )
        if answer or chunks:
            body: str | list[dict[str, Any]] = answer
            if chunks:
                body = ([{"type": "text", "text": answer}] if answer else []) + chunks
            await self._add(Stored(entries.message_output(message_id, body, speaker.model, speaker.agent_id)))

    def _absorb(
        self, event: Any, message_id: str, content: list[str], calls: list[dict[str, str]], output_index: int
    ) -> dict[str, Any] | None:
        speaker = self._speaker
        if isinstance(event, ContentDelta):
            content.append(event.text)
            return entries.event(
                "message.output.delta",
                id=message_id,
                content=event.text,
                output_index=output_index,
                content_index=0,
                model=speaker.model,
                agent_id=speaker.agent_id,
            )
        if event.id is not None:
            calls.append(
                {"entry_id": new_id("fc"), "tool_call_id": event.id, "name": event.name or "", "arguments": ""}
            )
        call = calls[event.index]
        call["arguments"] += event.arguments
        if self._is_function(call["name"]):
            return entries.event(
                "function.call.delta",
                id=call["entry_id"],
                name=call["name"],
                tool_call_id=call["tool_call_id"],
                arguments=event.arguments,
                output_index=output_index + 1 + event.index,
                model=speaker.model,
                agent_id=speaker.agent_id,
            )
        return None

    def _attachments(self, answer: str) -> list[dict[str, Any]]:
        """The run's images, and the passages the answer cites as [n]."""
        chunks, self._files = self._files, []
        cited = {int(n) for n in _CITATION.findall(answer)}
        for index, passage in enumerate(self._passages, start=1):
            if index in cited:
                chunks.append(
                    {
                        "type": "tool_reference",
                        "tool": DOCUMENT_LIBRARY,
                        "title": passage.document_name,
                        "description": passage.text,
                    }
                )
        self._passages = []
        return chunks

    # -- tool calls

    def _is_function(self, name: str) -> bool:
        return any(t["type"] == "function" and t["function"]["name"] == name for t in self._speaker.tools)

    async def _run_call(self, call: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        speaker = self._speaker
        name, arguments = call["name"], call["arguments"] or "{}"
        if self._is_function(name):
            await self._add(
                Stored(
                    entries.function_call(
                        call["entry_id"], call["tool_call_id"], name, arguments, speaker.model, speaker.agent_id
                    )
                )
            )
            return
        if name.startswith(HANDOFF_PREFIX) and name[len(HANDOFF_PREFIX) :] in speaker.handoffs:
            async for event in self._handoff(name[len(HANDOFF_PREFIX) :]):
                yield event
            return
        entry_id = new_id("tool")
        output_index = len(self.outputs)
        yield entries.event(
            "tool.execution.started",
            id=entry_id,
            name=name,
            arguments=arguments,
            output_index=output_index,
            model=speaker.model,
            agent_id=speaker.agent_id,
        )
        outcome = await self._execute(name, parse_arguments(arguments))
        self._files += outcome.files
        self._passages = outcome.passages or self._passages
        yield entries.event("tool.execution.done", id=entry_id, name=name, info=outcome.info, output_index=output_index)
        body = entries.tool_execution(entry_id, name, arguments, outcome.info, speaker.model, speaker.agent_id)
        await self._add(Stored(body, outcome.model_text))

    async def _execute(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        tool = next((t for t in self._speaker.tools if t["type"] == name), None)
        if tool is None:
            return ToolOutcome({"error": f"no tool named '{name}'"}, f"Error: there is no tool named '{name}'.")
        if name == CODE_INTERPRETER:
            code = str(arguments.get("code", ""))
            return await self._ctx.sandboxes.run_code(self._ctx.conversation_id, self._ctx.workspace_id, code)
        query = str(arguments.get("query", ""))
        return await search_documents(self._ctx.libraries, self._ctx.workspace_id, tool["library_ids"], query)

    async def _handoff(self, agent_id: str) -> AsyncIterator[dict[str, Any]]:
        previous = self._speaker
        target = self._ctx.find_agent(agent_id)
        entry_id = new_id("handoff")
        output_index = len(self.outputs)
        yield entries.event(
            "agent.handoff.started",
            id=entry_id,
            previous_agent_id=previous.agent_id or "",
            previous_agent_name=previous.name,
            output_index=output_index,
        )
        self._speaker = Speaker.of(target)
        yield entries.event(
            "agent.handoff.done",
            id=entry_id,
            next_agent_id=target.id,
            next_agent_name=target.name,
            output_index=output_index,
        )
        body = entries.agent_handoff(entry_id, (previous.agent_id or "", previous.name), (target.id, target.name))
        await self._add(Stored(body))


def input_entries(inputs: str | list[Any]) -> list[Stored]:
    """A request's `inputs` as entries: a string is one user message."""
    if isinstance(inputs, str):
        return [Stored(entries.message_input("user", inputs))]
    made = []
    for item in inputs:
        if item.type == "message.input":
            made.append(Stored(entries.message_input(item.role, item.content)))
        else:
            made.append(Stored(entries.function_result(item.tool_call_id, item.result)))
    return made


def check_inputs(history: list[Stored], inputs: list[Stored]) -> None:
    """Function results must answer calls the conversation is waiting on, and a
    conversation waiting on calls takes nothing else."""
    pending = entries.pending_calls(history)
    for stored in inputs:
        if stored.type == "function.result":
            call_id = stored.body["tool_call_id"]
            if call_id not in pending:
                raise Invalid(f"No pending function call with id '{call_id}'", param="inputs")
            pending.discard(call_id)
    if pending:
        missing = ", ".join(sorted(pending))
        raise Invalid(f"The conversation waits for the results of function calls {missing}", param="inputs")
