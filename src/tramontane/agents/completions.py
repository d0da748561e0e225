"""Mistral's agents completions: a chat completion by an agent, stateless.

The agent gives the model, the instructions (as the system message), its
function tools and its completion arguments; fields the request sets override
them. Server-side tools (code interpreter, document libraries) run only in
conversations, where the server runs the loop; a completion returns the model's
tool calls to the caller, so only function tools take part."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import Invalid
from ..inference.protocol import ChatCompletionRequest
from .schemas import Agent, AgentsCompletionRequest

# The request's own fields, beside the messages and the agent's id.
_OWN = {"agent_id", "messages"}


def chat_request(agent: Agent, body: AgentsCompletionRequest) -> ChatCompletionRequest:
    fields: dict[str, Any] = {k: v for k, v in agent.completion_args.items() if v is not None}
    function_tools = [tool for tool in agent.tools if tool.get("type") == "function"]
    if function_tools:
        fields["tools"] = function_tools
    fields.update(body.model_dump(exclude_unset=True, exclude=_OWN, by_alias=True))
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    if agent.instructions:
        messages.insert(0, {"role": "system", "content": agent.instructions})
    try:
        return ChatCompletionRequest.model_validate({**fields, "model": agent.model, "messages": messages})
    except ValidationError as exc:  # an agent's stored arguments the chat API does not take
        first = exc.errors()[0]
        raise Invalid(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
