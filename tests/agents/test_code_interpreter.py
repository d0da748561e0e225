"""The code_interpreter tool: code runs in the conversation's own tier-1 sandbox,
keeps its state between calls, returns its output and charts, and the sandbox is
reclaimed when the conversation is deleted or left idle."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Callable

import pytest
from agents_helpers import SANDBOX_IDLE_S, SCRIPTED, AgentsServer, Tenant
from mistralai.client import Mistral

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0, reason="tier-1 sandboxes need bubblewrap and root"
)


def run_code(code: str) -> str:
    return f"<tool_call>\n{json.dumps({'name': 'code_interpreter', 'arguments': {'code': code}})}\n</tool_call>"


def sandboxes_of(server: AgentsServer, conversation_id: str) -> list:
    return server.sandboxes.list(metadata={"conversation_id": conversation_id})


def test_code_interpreter_computes_and_charts(
    mistral: Mistral, server: AgentsServer, tenant: Tenant, script: Callable[..., None]
) -> None:
    agent = mistral.beta.agents.create(model=SCRIPTED, name="analyst", tools=[{"type": "code_interpreter"}])
    chart = (
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "plt.bar(['a', 'b'], [total, total * 2])\nprint('total', total)"
    )
    script(run_code("total = sum(i * i for i in range(10))"), run_code(chart), "The total is 285; see the chart.")
    with mistral.beta.conversations.start_stream(agent_id=agent.id, inputs="Sum the squares below 10, chart it.") as s:
        events = list(s)
    kinds = [e.event for e in events]
    assert kinds.count("tool.execution.started") == kinds.count("tool.execution.done") == 2
    done = [e.data for e in events if e.event == "tool.execution.done"]
    assert done[1].name == "code_interpreter" and done[1].info["stdout"] == "total 285\n"  # state kept
    [image] = done[1].info["images"]
    assert base64.b64decode(image["data"]).startswith(PNG_MAGIC)

    conversation_id = events[0].data.conversation_id
    history = mistral.beta.conversations.get_history(conversation_id=conversation_id)
    assert [e.type for e in history.entries] == ["message.input", "tool.execution", "tool.execution", "message.output"]
    text, file = history.entries[-1].content
    assert text.text == "The total is 285; see the chart."
    assert file.type == "tool_file" and file.file_id == image["file_id"] and file.file_type == "png"
    # The model read the printed output as the call's result.
    assert "total 285" in server.backend.requests[-1].messages[-1].content

    [sandbox] = sandboxes_of(server, conversation_id)
    assert sandbox.spec.owner == tenant.workspace_id
    mistral.beta.conversations.delete(conversation_id=conversation_id)
    assert sandboxes_of(server, conversation_id) == []


def test_idle_conversation_sandbox_is_reclaimed(
    mistral: Mistral, server: AgentsServer, script: Callable[..., None]
) -> None:
    script(run_code("x = 1"), "Done.")
    response = mistral.beta.conversations.start(model=SCRIPTED, inputs="Set x", tools=[{"type": "code_interpreter"}])
    assert len(sandboxes_of(server, response.conversation_id)) == 1
    deadline = time.monotonic() + SANDBOX_IDLE_S + 10
    while sandboxes_of(server, response.conversation_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sandboxes_of(server, response.conversation_id) == []
    # The conversation goes on; its next code runs in a fresh sandbox (state is gone).
    script(run_code("print('x' in globals())"), "Fresh.")
    again = mistral.beta.conversations.append(conversation_id=response.conversation_id, inputs="Is x set?")
    assert again.outputs[0].info["stdout"] == "False\n"
    mistral.beta.conversations.delete(conversation_id=response.conversation_id)
