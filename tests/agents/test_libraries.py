"""beta.libraries and their documents through the SDK, and the document_library
tool: passages found in the sqlite-vec index and cited in the answer."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from agents_helpers import SCRIPTED, AgentsServer
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from sqlalchemy import select

from tramontane.agents.models import AgentRow, ChunkRow, ConversationRow, DocumentRow, EntryRow, LibraryRow
from tramontane.tenancy import CLI

HANDBOOK = """# Office handbook

The office opens at 8am and closes at 6pm on weekdays. Badges are collected at the front desk.

## Parking

Visitors park in the underground garage on level -2. The garage gate code is 4417, changed every month.

## Cafeteria

Lunch is served from noon until 2pm. The soup of the day is announced on the screen by the lifts.
"""
RECIPES = "Pancakes need flour, eggs and milk. Whisk them and cook on a hot buttered pan."


def upload(mistral: Mistral, library_id: str, name: str, text: str):
    return mistral.beta.libraries.documents.upload(
        library_id=library_id, file={"file_name": name, "content": text.encode()}
    )


def test_library_and_document_endpoints(mistral: Mistral) -> None:
    library = mistral.beta.libraries.create(name="handbook", description="Office rules", chunk_size=256)
    assert library.id.startswith("lib_") and library.chunk_size == 256 and library.nb_documents == 0
    document = upload(mistral, library.id, "handbook.md", HANDBOOK)
    assert document.process_status == "done" and document.size == len(HANDBOOK.encode())
    assert (
        mistral.beta.libraries.documents.status(library_id=library.id, document_id=document.id).process_status == "done"
    )
    text = mistral.beta.libraries.documents.text_content(library_id=library.id, document_id=document.id)
    assert text.text == HANDBOOK
    assert [d.id for d in mistral.beta.libraries.documents.list(library_id=library.id).data] == [document.id]
    assert mistral.beta.libraries.documents.get(library_id=library.id, document_id=document.id).name == "handbook.md"
    assert mistral.beta.libraries.get(library_id=library.id).nb_documents == 1
    assert library.id in [lib.id for lib in mistral.beta.libraries.list().data]

    with pytest.raises(SDKError) as binary:
        mistral.beta.libraries.documents.upload(
            library_id=library.id, file={"file_name": "scan.pdf", "content": b"%PDF-1.7 \x00\x01"}
        )
    assert binary.value.status_code == 400

    mistral.beta.libraries.documents.delete(library_id=library.id, document_id=document.id)
    assert mistral.beta.libraries.documents.list(library_id=library.id).data == []
    mistral.beta.libraries.delete(library_id=library.id)
    with pytest.raises(SDKError) as gone:
        mistral.beta.libraries.get(library_id=library.id)
    assert gone.value.status_code == 404


def test_answer_cites_the_right_passage(mistral: Mistral, server: AgentsServer, script: Callable[..., None]) -> None:
    library = mistral.beta.libraries.create(name="office", chunk_size=256)
    handbook = upload(mistral, library.id, "handbook.md", HANDBOOK)
    upload(mistral, library.id, "recipes.txt", RECIPES)
    agent = mistral.beta.agents.create(
        model=SCRIPTED, name="concierge", tools=[{"type": "document_library", "library_ids": [library.id]}]
    )
    search = json.dumps({"name": "document_library", "arguments": {"query": "What is the code of the parking garage?"}})
    script(f"<tool_call>\n{search}\n</tool_call>", "The garage gate code is 4417 [1].")
    response = mistral.beta.conversations.start(agent_id=agent.id, inputs="How do I get into the garage?")
    execution, answer = response.outputs
    top = execution.info["results"][0]
    assert top["document_id"] == handbook.id and "4417" in top["text"] and "Cafeteria" not in top["text"]
    assert "[1] (handbook.md)" in server.backend.requests[-1].messages[-1].content  # what the model read
    text, reference = answer.content
    assert text.text == "The garage gate code is 4417 [1]."
    assert reference.type == "tool_reference" and reference.title == "handbook.md" and "4417" in reference.description


def test_another_workspace_sees_no_library(mistral: Mistral, other: Mistral, script: Callable[..., None]) -> None:
    library = mistral.beta.libraries.create(name="private")
    document = upload(mistral, library.id, "secret.txt", "The vault combination is 9921.")
    assert library.id not in [lib.id for lib in other.beta.libraries.list().data]
    for attempt in (
        lambda: other.beta.libraries.get(library_id=library.id),
        lambda: other.beta.libraries.delete(library_id=library.id),
        lambda: other.beta.libraries.documents.list(library_id=library.id),
        lambda: other.beta.libraries.documents.get(library_id=library.id, document_id=document.id),
        lambda: other.beta.libraries.documents.text_content(library_id=library.id, document_id=document.id),
        lambda: upload(other, library.id, "x.txt", "x"),
    ):
        with pytest.raises(SDKError) as hidden:
            attempt()
        assert hidden.value.status_code == 404
    # Naming another workspace's library in a tool finds nothing in it.
    search = json.dumps({"name": "document_library", "arguments": {"query": "vault combination"}})
    script(f"<tool_call>\n{search}\n</tool_call>", "Nothing found.")
    tools = [{"type": "document_library", "library_ids": [library.id]}]
    response = other.beta.conversations.start(model=SCRIPTED, inputs="Vault?", tools=tools)
    assert response.outputs[0].info["results"] == []


def test_erasing_a_workspace_erases_its_agents_conversations_and_index(
    server: AgentsServer, script: Callable[..., None]
) -> None:
    doomed = server.create_tenant("agents-doomed")
    client = server.client(doomed)
    library = client.beta.libraries.create(name="doomed")
    upload(client, library.id, "notes.txt", "Nothing to keep.")
    client.beta.agents.create(model=SCRIPTED, name="doomed")
    script("Bye.")
    client.beta.conversations.start(model=SCRIPTED, inputs="Hi")
    index = server.tenancy.workspace_dir(doomed.workspace_id) / "libraries" / f"{library.id}.sqlite"
    assert index.exists()
    server.tenancy.erase_workspace(doomed.workspace_id, CLI)
    assert not index.exists()
    with server.tenancy.store.session() as session:
        for row_type in (AgentRow, ConversationRow, EntryRow, LibraryRow, DocumentRow, ChunkRow):
            assert session.scalars(select(row_type).where(row_type.workspace_id == doomed.workspace_id)).all() == []


def test_pdf_word_and_html_documents_are_searchable_with_pages(
    mistral: Mistral, script: Callable[..., None]
) -> None:
    from document_samples import HTML_PAGE, text_pdf, word_file

    library = mistral.beta.libraries.create(name="documents", chunk_size=256)
    pdf = text_pdf([["Cover page of the security manual"], ["Server room access needs badge level 3."]])
    uploaded = {
        "manual.pdf": mistral.beta.libraries.documents.upload(
            library_id=library.id, file={"file_name": "manual.pdf", "content": pdf}
        ),
        "report.docx": mistral.beta.libraries.documents.upload(
            library_id=library.id, file={"file_name": "report.docx", "content": word_file()}
        ),
        "policy.html": mistral.beta.libraries.documents.upload(
            library_id=library.id, file={"file_name": "policy.html", "content": HTML_PAGE.encode()}
        ),
    }
    text = mistral.beta.libraries.documents.text_content(library_id=library.id, document_id=uploaded["report.docx"].id)
    assert "| North | 120 |" in text.text
    search = json.dumps({"name": "document_library", "arguments": {"query": "Who may enter the server room?"}})
    script(f"<tool_call>\n{search}\n</tool_call>", "Badge level 3 [1].")
    agent = mistral.beta.agents.create(
        model=SCRIPTED, name="librarian", tools=[{"type": "document_library", "library_ids": [library.id]}]
    )
    execution, _ = mistral.beta.conversations.start(agent_id=agent.id, inputs="Server room?").outputs
    top = execution.info["results"][0]
    assert top["document_id"] == uploaded["manual.pdf"].id and top["page"] == 2 and "badge level 3" in top["text"]
    for name, content in (("empty.pdf", b"%PDF-1.4 corrupt"), ("notes.docx", b"PK\x03\x04 nope"), ("x.bin", b"\x00")):
        with pytest.raises(SDKError) as refused:
            mistral.beta.libraries.documents.upload(library_id=library.id, file={"file_name": name, "content": content})
        assert refused.value.status_code == 400
    assert len(mistral.beta.libraries.documents.list(library_id=library.id).data) == 3  # the refused ones are not kept
