"""Agents, their conversations, and document libraries."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, UploadFile
from starlette.responses import Response

from ..tenancy import Capability
from .web import ConsoleRoute, CurrentUser, Redirect

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

# A conversation turn from the console answers within this many tokens.
TURN_MAX_TOKENS = 512


def message_text(content: Any) -> str:
    """A message's text, whether a string or a list of chunks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(c.get("text", "")) if isinstance(c, dict) else str(c) for c in content)
    return "" if content is None else str(content)


def entry_text(entry: dict[str, Any]) -> str:
    """What a conversation entry says: a message's text, a tool call, or a tool's result."""
    if "content" in entry:
        return message_text(entry["content"])
    if entry.get("type") == "function.call":
        return f"{entry.get('name')}({entry.get('arguments')})"
    return str(entry.get("result", ""))


@router.get("/agents")
async def agents_page(user: CurrentUser) -> Response:
    user.require(Capability.INFERENCE)
    agents = await user.json("GET", "/v1/agents")
    conversations = await user.json("GET", "/v1/conversations")
    libraries = (await user.json("GET", "/v1/libraries"))["data"]
    served = (await user.json("GET", "/v1/models"))["data"]
    models = [m["id"] for m in served if m["capabilities"].get("completion_chat")]
    return user.render(
        "agents.html", title="Agents", agents=agents, conversations=conversations, libraries=libraries, models=models
    )


@router.post("/agents")
async def create_agent(
    user: CurrentUser,
    name: Annotated[str, Form(max_length=200)],
    model: Annotated[str, Form(max_length=256)],
    instructions: Annotated[str, Form(max_length=20_000)] = "",
    description: Annotated[str, Form(max_length=2_000)] = "",
) -> Response:
    user.require(Capability.INFERENCE)
    body = {"name": name, "model": model, "instructions": instructions or None, "description": description or None}
    agent = await user.json("POST", "/v1/agents", json=body)
    user.flash(f"Agent {agent['name']} created.", "ok")
    raise Redirect("/agents")


@router.post("/conversations")
async def start_conversation(
    user: CurrentUser, agent_id: Annotated[str, Form(max_length=256)], inputs: Annotated[str, Form(max_length=100_000)]
) -> Response:
    user.require(Capability.INFERENCE)
    body = {"agent_id": agent_id, "inputs": inputs, "stream": False,
            "completion_args": {"max_tokens": TURN_MAX_TOKENS}}
    answer = await user.json("POST", "/v1/conversations", json=body)
    raise Redirect(f"/conversations/{quote(answer['conversation_id'])}")


@router.get("/conversations/{conversation_id}")
async def conversation_page(conversation_id: str, user: CurrentUser) -> Response:
    user.require(Capability.INFERENCE)
    path = f"/v1/conversations/{quote(conversation_id, safe='')}"
    conversation = await user.json("GET", path)
    entries = (await user.json("GET", f"{path}/history"))["entries"]
    shown = [{"role": e.get("role") or e.get("type"), "text": entry_text(e)} for e in entries]
    return user.render("conversation.html", title=conversation_id, c=conversation, entries=shown)


@router.post("/conversations/{conversation_id}")
async def append_to_conversation(
    conversation_id: str, user: CurrentUser, inputs: Annotated[str, Form(max_length=100_000)]
) -> Response:
    user.require(Capability.INFERENCE)
    body = {"inputs": inputs, "stream": False, "completion_args": {"max_tokens": TURN_MAX_TOKENS}}
    await user.json("POST", f"/v1/conversations/{quote(conversation_id, safe='')}", json=body)
    raise Redirect(f"/conversations/{quote(conversation_id)}")


@router.post("/libraries")
async def create_library(
    user: CurrentUser,
    name: Annotated[str, Form(max_length=200)],
    description: Annotated[str, Form(max_length=2_000)] = "",
) -> Response:
    user.require(Capability.INFERENCE)
    library = await user.json("POST", "/v1/libraries", json={"name": name, "description": description or None})
    raise Redirect(f"/libraries/{quote(library['id'])}")


@router.get("/libraries/{library_id}")
async def library_page(library_id: str, user: CurrentUser) -> Response:
    user.require(Capability.INFERENCE)
    path = f"/v1/libraries/{quote(library_id, safe='')}"
    library = await user.json("GET", path)
    documents = (await user.json("GET", f"{path}/documents"))["data"]
    return user.render("library.html", title=library["name"], library=library, documents=documents)


@router.post("/libraries/{library_id}/documents")
async def upload_document(library_id: str, user: CurrentUser, file: Annotated[UploadFile, File()]) -> Response:
    user.require(Capability.INFERENCE)
    name = file.filename or "document.txt"
    document = await user.json(
        "POST",
        f"/v1/libraries/{quote(library_id, safe='')}/documents",
        files={"file": (name, await file.read(), file.content_type or "application/octet-stream")},
    )
    user.flash(f"Uploaded {document['name']}: {document['process_status']}.", "ok")
    raise Redirect(f"/libraries/{quote(library_id)}")
