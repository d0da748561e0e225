"""The Files API's storage: bytes on disk under the owning workspace's directory,
metadata in the store. Uploads stream to disk and stop at the size limit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, select

from ..errors import Invalid, TooLarge
from ..store import Store
from ..store.types import new_id
from ..tenancy import get_owned, owned
from ..tenancy.directory import workspace_dir
from .models import FileRow

# Mistral's purposes, and OpenAI's that mean "keep this file" (stored the same way).
PURPOSES = ("fine-tune", "batch", "ocr", "user_data", "assistants", "evals", "vision")
SAMPLE_TYPES = {"fine-tune": "instruct", "batch": "batch_request", "ocr": "ocr_input"}
COPY_CHUNK = 1024 * 1024


class FileStore:
    def __init__(self, store: Store, home: Path, max_bytes: int):
        self.store = store
        self.home = home
        self.max_bytes = max_bytes

    def path(self, row: FileRow) -> Path:
        return workspace_dir(self.home, row.workspace_id) / "files" / row.id

    def create(
        self,
        workspace_id: str,
        filename: str,
        purpose: str,
        source: BinaryIO,
        *,
        sample_type: str | None = None,
        origin: str = "upload",
    ) -> FileRow:
        """Stores `source`'s bytes as a new file of the workspace; 413 past the limit."""
        if purpose not in PURPOSES:
            raise Invalid(f"purpose must be one of {', '.join(PURPOSES)}, not '{purpose}'", param="purpose")
        row = FileRow(
            id=new_id("file"),  # known before the insert: it names the file on disk
            workspace_id=workspace_id,
            filename=os.path.basename(filename) or "file",
            purpose=purpose,
            sample_type=sample_type or SAMPLE_TYPES.get(purpose, "instruct"),
            source=origin,
            bytes=0,
        )
        target = self.path(row)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = lines = 0
        try:
            with open(target, "wb") as out:
                while chunk := source.read(COPY_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise TooLarge(f"files are limited to {self.max_bytes} bytes", code="file_too_large")
                    lines += chunk.count(b"\n")
                    out.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        row.bytes = size
        row.num_lines = lines + (1 if size and not _ends_with_newline(target) else 0)
        row.mimetype = "application/jsonl" if row.filename.endswith(".jsonl") else "application/octet-stream"
        with self.store.write_session() as session:
            session.add(row)
        return row

    def get(self, workspace_id: str, file_id: str) -> FileRow:
        """The workspace's file `file_id`; another workspace's is missing (404)."""
        with self.store.session() as session:
            return get_owned(session, FileRow, file_id, workspace_id, "file", param="file_id")

    def read(self, row: FileRow) -> bytes:
        return self.path(row).read_bytes()

    def read_image(self, workspace_id: str | None, file_id: str) -> bytes:
        """An image a chat request names by file id: a file of the caller's workspace only."""
        if workspace_id is None:
            raise Invalid("Files API ids are read for a workspace's own requests only", param="messages")
        return self.read(self.get(workspace_id, file_id))

    def list(
        self, workspace_id: str, *, purpose: str | None, page: int, page_size: int, search: str | None = None
    ) -> tuple[list[FileRow], int]:
        query = owned(FileRow, workspace_id)
        if purpose:
            query = query.where(FileRow.purpose == purpose)
        if search:
            query = query.where(FileRow.filename.contains(search, autoescape=True))
        with self.store.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(FileRow.created_at.desc(), FileRow.id).offset(page * page_size).limit(page_size)
            ).all()
        return list(rows), total

    def delete(self, workspace_id: str, file_id: str) -> None:
        row = self.get(workspace_id, file_id)
        with self.store.write_session() as session:
            found = session.get(FileRow, row.id)
            if found is not None:
                session.delete(found)
        self.path(row).unlink(missing_ok=True)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
