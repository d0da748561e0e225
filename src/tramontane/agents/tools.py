"""The tools that run on the server: the code interpreter, in a tier-1 sandbox kept
for the conversation, and document-library search.

Each returns the tool.execution entry's `info` (for the client) and the text the
model reads as the call's result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..sandbox import ManagedSandbox, SandboxError, SandboxManager, SandboxSpec, SandboxState
from ..store.types import new_id
from .libraries import Libraries, Passage

CODE_INTERPRETER = "code_interpreter"
DOCUMENT_LIBRARY = "document_library"
SEARCH_RESULTS = 5
CODE_TIMEOUT_S = 60.0
MAX_RESULT_CHARS = 4000  # of output shown to the model: a small context fills fast

TOOL_DEFINITIONS: dict[str, dict[str, Any]] = {
    CODE_INTERPRETER: {
        "name": CODE_INTERPRETER,
        "description": "Runs Python code in a stateful sandbox (variables persist between calls; numpy and "
        "matplotlib are available; figures left open are returned as images). Returns stdout, errors and "
        "the value of the last expression.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
    },
    DOCUMENT_LIBRARY: {
        "name": DOCUMENT_LIBRARY,
        "description": "Searches the user's documents. Returns numbered passages; cite them as [1], [2]...",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


@dataclass
class ToolOutcome:
    info: dict[str, Any]
    model_text: str
    # Content chunks for the answer: files the code made, passages it may cite.
    files: list[dict[str, Any]] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + "\n[... output truncated]"


class ConversationSandboxes:
    """One sandbox per conversation, found by its metadata: the sandbox manager is
    the only record, and its idle timeout reclaims the sandboxes of conversations
    nobody continues."""

    def __init__(self, manager: SandboxManager | None, *, idle_timeout_s: float = 600.0, timeout_s: float = 6 * 3600.0):
        self._manager = manager
        self._idle_timeout_s = idle_timeout_s
        self._timeout_s = timeout_s

    def find(self, conversation_id: str, owner: str) -> list[ManagedSandbox]:
        if self._manager is None:
            return []
        return self._manager.list(metadata={"conversation_id": conversation_id}, owner=owner)

    async def _sandbox(self, conversation_id: str, owner: str) -> ManagedSandbox:
        if self._manager is None:
            raise SandboxError("sandboxes are not enabled on this server", code="sandboxes_disabled")
        found = [s for s in self.find(conversation_id, owner) if s.state is SandboxState.RUNNING]
        if found:
            return found[0]
        spec = SandboxSpec(
            timeout_s=self._timeout_s,
            idle_timeout_s=self._idle_timeout_s,
            metadata={"conversation_id": conversation_id},
            owner=owner,
        )
        return await self._manager.create(spec)

    async def run_code(self, conversation_id: str, owner: str, code: str) -> ToolOutcome:
        try:
            sandbox = await self._sandbox(conversation_id, owner)
            execution = await sandbox.run_code(code, timeout=CODE_TIMEOUT_S)
        except SandboxError as exc:
            return ToolOutcome({"code": code, "error": exc.message}, f"The code could not run: {exc.message}")
        stdout, stderr = "".join(execution.logs.stdout), "".join(execution.logs.stderr)
        error = None
        if execution.error is not None:
            error = f"{execution.error.name}: {execution.error.value}"
        files = []
        for result in execution.results:
            if result.png is not None:
                file_id = new_id("file")
                files.append(
                    {"file_id": file_id, "file_name": f"{file_id}.png", "file_type": "png", "data": result.png}
                )
        info = {
            "code": code,
            "stdout": stdout,
            "stderr": stderr,
            "result": execution.text,
            "error": error,
            "images": files,
        }
        parts = [
            f"stdout:\n{stdout}" if stdout else "",
            f"stderr:\n{stderr}" if stderr else "",
            f"result: {execution.text}" if execution.text else "",
            f"error: {error}" if error else "",
            f"{len(files)} image(s) produced and shown to the user" if files else "",
        ]
        model_text = _clip("\n".join(p for p in parts if p) or "(no output)")
        chunks = [
            {
                "type": "tool_file",
                "tool": CODE_INTERPRETER,
                "file_id": f["file_id"],
                "file_name": f["file_name"],
                "file_type": "png",
            }
            for f in files
        ]
        return ToolOutcome(info, model_text, files=chunks)

    async def release(self, conversation_id: str, owner: str) -> None:
        """Kills the conversation's sandbox (its conversation was deleted)."""
        for sandbox in self.find(conversation_id, owner):
            assert self._manager is not None
            try:
                await self._manager.kill(sandbox.id, owner)
            except SandboxError:  # reclaimed meanwhile
                pass


async def search_documents(libraries: Libraries, workspace_id: str, library_ids: list[str], query: str) -> ToolOutcome:
    passages = await libraries.search(workspace_id, library_ids, query, SEARCH_RESULTS)
    results = [
        {
            "index": i + 1,
            "library_id": p.library_id,
            "document_id": p.document_id,
            "document_name": p.document_name,
            "chunk_index": p.chunk_index,
            "page": p.page,
            "score": round(p.score, 4),
            "text": p.text,
        }
        for i, p in enumerate(passages)
    ]
    text = "\n\n".join(f"[{r['index']}] ({_source(r)})\n{r['text']}" for r in results)
    return ToolOutcome(
        {"query": query, "results": results}, _clip(text or "No passage matches the query."), passages=passages
    )


def _source(result: dict[str, Any]) -> str:
    page = result["page"]
    return f"{result['document_name']}, page {page}" if page is not None else result["document_name"]


def parse_arguments(arguments: str) -> dict[str, Any]:
    """A call's arguments object; models do write broken JSON."""
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
