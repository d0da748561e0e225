"""Python SDK for the sandbox API, shaped like E2B's (`Sandbox.create()`,
`sbx.commands.run()`, `sbx.files.write()`, `sbx.run_code()`, `sbx.kill()`), so
code written for E2B moves over by changing the import and the API URL.

    from tramontane.sandbox import Sandbox
    with Sandbox.create(api_url="http://127.0.0.1:8000") as sbx:
        print(sbx.commands.run("echo hi").stdout)
        print(sbx.run_code("1 + 1").text)
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import httpx

from .client_io import FilesystemEvent, Pty, WatchHandle, watch_dir
from .execution import Execution, ExecutionError, Logs, Result
from .files import EntryInfo
from .process import CommandResult, ProcessInfo
from .sandbox import SandboxInfo, SandboxState

DEFAULT_API_URL = "http://127.0.0.1:8000"
OutputHandler = Callable[[str], Any]


class SandboxException(Exception):
    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class InvalidArgumentException(SandboxException): ...


class NotFoundException(SandboxException): ...


class NotEnoughSpaceException(SandboxException): ...


class CommandExitException(SandboxException):
    """A command ended with a non-zero exit code (E2B raises rather than returns)."""

    def __init__(self, result: CommandResult):
        super().__init__(f"command exited with code {result.exit_code}: {result.stderr[-500:]}")
        self.result = result
        self.exit_code, self.stdout, self.stderr, self.error = (
            result.exit_code,
            result.stdout,
            result.stderr,
            result.error,
        )


class LimitReachedException(SandboxException):
    """The sandbox used up one of its own limits; `code` names it (pids_exhausted,
    memory_exhausted, nofile_exhausted, output_limit)."""


_BY_STATUS: dict[int, type[SandboxException]] = {
    400: InvalidArgumentException,
    404: NotFoundException,
    413: InvalidArgumentException,
    422: InvalidArgumentException,
    507: NotEnoughSpaceException,
}
_BY_CODE: dict[str, type[SandboxException]] = {
    "no_space": NotEnoughSpaceException,
    "pids_exhausted": LimitReachedException,
    "memory_exhausted": LimitReachedException,
    "nofile_exhausted": LimitReachedException,
    "output_limit": LimitReachedException,
}


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle costs tens of milliseconds; httpx would redo it for
    # every client, that is every Sandbox.create().
    return httpx.create_ssl_context()


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = response.text or response.reason_phrase, None
    kind = _BY_CODE.get(str(code)) or _BY_STATUS.get(response.status_code, SandboxException)
    raise kind(message, response.status_code, code)


def _execution(raw: dict[str, Any]) -> Execution:
    error = raw.get("error")
    return Execution(
        results=[Result(**r) for r in raw.get("results", [])],
        logs=Logs(**raw.get("logs", {})),
        error=ExecutionError(**error) if error else None,
        execution_count=raw.get("execution_count"),
    )


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line:
            event = json.loads(line)
            if event.get("type") == "error":
                _raise_for_event(event)
            yield event


def _raise_for_event(event: dict[str, Any]) -> None:
    error = event.get("error", {})
    code = error.get("code")
    raise _BY_CODE.get(str(code), SandboxException)(str(error.get("message", "sandbox error")), None, code)


class CommandHandle:
    """A background command; its output is read by `wait()`."""

    def __init__(self, sandbox: Sandbox, response: httpx.Response, pid: int, events: Iterator[dict[str, Any]]):
        self._sandbox, self._response, self.pid, self._events = sandbox, response, pid, events

    def wait(self, on_stdout: OutputHandler | None = None, on_stderr: OutputHandler | None = None) -> CommandResult:
        out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        try:
            for event in self._events:
                if event["type"] in out:
                    out[event["type"]].append(event["data"])
                    handler = on_stdout if event["type"] == "stdout" else on_stderr
                    if handler is not None:
                        handler(event["data"])
                elif event["type"] == "exit":
                    result = CommandResult(
                        self.pid, event["exit_code"], "".join(out["stdout"]), "".join(out["stderr"]), event.get("error")
                    )
                    if result.exit_code != 0:
                        raise CommandExitException(result)
                    return result
        finally:
            self._response.close()
        raise SandboxException("the command's stream ended without an exit code")

    def kill(self) -> bool:
        return self._sandbox.commands.kill(self.pid)

    def disconnect(self) -> None:
        """Stops reading the output; the command keeps running."""
        self._response.close()


class Commands:
    def __init__(self, sandbox: Sandbox):
        self._sandbox = sandbox

    def run(
        self,
        cmd: str,
        background: bool = False,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        timeout: float | None = 60,
    ) -> Any:
        """Runs `cmd` under bash: a CommandResult (CommandExitException on a
        non-zero exit), or with `background=True` a CommandHandle at once."""
        body = {"cmd": cmd, "envs": envs or {}, "cwd": cwd, "timeout": None if background else timeout}
        body |= {"background": background, "stream": True}
        request = self._sandbox._http.build_request("POST", self._sandbox._path("commands"), json=body)
        response = self._sandbox._http.send(request, stream=True)
        try:
            _raise_for(response)
            events = _events(response)
            start = next(events, None)
            if start is None or start.get("type") != "start":
                raise SandboxException("the command's stream did not start")
        except BaseException:
            response.close()
            raise
        handle = CommandHandle(self._sandbox, response, int(start["pid"]), events)
        return handle if background else handle.wait(on_stdout, on_stderr)

    def list(self) -> list[ProcessInfo]:
        processes = self._sandbox._call("GET", "processes")["processes"]
        return [ProcessInfo(p["pid"], p["cmd"], p["cwd"], _timestamp(p["started_at"])) for p in processes]

    def kill(self, pid: int) -> bool:
        try:
            self._sandbox._call("DELETE", f"processes/{pid}")
        except NotFoundException:
            return False
        return True

    def kill_all(self) -> int:
        """Kills every process in the sandbox, the code interpreter included (its
        state is lost); works even when a fork bomb holds every pid."""
        return int(self._sandbox._call("DELETE", "processes")["killed"])


class Filesystem:
    def __init__(self, sandbox: Sandbox):
        self._sandbox = sandbox

    def read(self, path: str, format: Literal["text", "bytes"] = "text") -> Any:
        response = self._sandbox._http.get(self._sandbox._path("files"), params={"path": path})
        _raise_for(response)
        return response.text if format == "text" else response.content

    def write(self, path: str, data: str | bytes) -> EntryInfo:
        content = data.encode() if isinstance(data, str) else data
        return _entry(self._sandbox._call("PUT", "files", params={"path": path}, content=content))

    def list(self, path: str = ".", depth: int = 1) -> list[EntryInfo]:
        entries = self._sandbox._call("GET", "files/list", params={"path": path, "depth": depth})["entries"]
        return [_entry(e) for e in entries]

    def get_info(self, path: str) -> EntryInfo:
        return _entry(self._sandbox._call("GET", "files/info", params={"path": path}))

    def exists(self, path: str) -> bool:
        try:
            self.get_info(path)
        except NotFoundException:
            return False
        return True

    def make_dir(self, path: str) -> bool:
        return bool(self._sandbox._call("POST", "files/mkdir", params={"path": path})["created"])

    def rename(self, old_path: str, new_path: str) -> EntryInfo:
        return _entry(self._sandbox._call("POST", "files/rename", json={"old_path": old_path, "new_path": new_path}))

    def remove(self, path: str) -> None:
        self._sandbox._call("DELETE", "files", params={"path": path})

    def watch_dir(
        self, path: str, on_event: Callable[[FilesystemEvent], Any] | None = None, recursive: bool = False
    ) -> WatchHandle:
        """Watches directory `path` (NotFoundException if it does not exist)."""
        return watch_dir(self._sandbox, path, on_event, recursive)


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _entry(raw: dict[str, Any]) -> EntryInfo:
    return EntryInfo(**{**raw, "modified_at": _timestamp(raw["modified_at"])})


def _info(raw: dict[str, Any]) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=raw["sandbox_id"],
        template=raw["template"],
        state=SandboxState(raw["state"]),
        metadata=dict(raw["metadata"]),
        started_at=_timestamp(raw["started_at"]),
        end_at=_timestamp(raw["end_at"]),
        cpu=raw["cpu"],
        memory_mb=raw["memory_mb"],
        disk_mb=raw["disk_mb"],
        idle_timeout_s=raw["idle_timeout"],
        warnings=list(raw.get("warnings", [])),
    )


class Sandbox:
    def __init__(self, sandbox_id: str, http: httpx.Client):
        self.sandbox_id = sandbox_id
        self._http = http
        self.commands = Commands(self)
        self.files = Filesystem(self)
        self.pty = Pty(self)

    @staticmethod
    def _client(api_url: str | None, api_key: str | None, request_timeout: float) -> httpx.Client:
        url = api_url or os.environ.get("TRAMONTANE_API_URL", DEFAULT_API_URL)
        key = api_key or os.environ.get("TRAMONTANE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=request_timeout, verify=_tls_context())

    @classmethod
    def create(
        cls,
        template: str | None = None,
        timeout: float = 300,
        metadata: dict[str, str] | None = None,
        envs: dict[str, str] | None = None,
        allow_internet_access: bool = False,
        *,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        idle_timeout: float | None = None,
        allow_out: list[str] | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float = 600,
    ) -> Sandbox:
        """`template`: a template's name or id, "base" (the host's /usr) or
        "microvm"; None: the platform's default (`get_info().template` says which
        one the sandbox got). `allow_out`: "host:port" entries the sandbox may
        reach through its HTTP proxy (HTTP_PROXY inside it); without it, the
        sandbox has no network."""
        http = cls._client(api_url, api_key, request_timeout)
        body: dict[str, object] = {"timeout": timeout, "metadata": metadata or {}, "envs": envs or {}}
        if template is not None:  # else the platform's default template
            body["template"] = template
        body |= {"allow_internet_access": allow_internet_access, "idle_timeout": idle_timeout}
        body |= {"network": {"allow_out": list(allow_out or [])}}
        body |= {k: v for k, v in {"cpu": cpu, "memory_mb": memory_mb, "disk_mb": disk_mb}.items() if v is not None}
        response = http.post("/v1/sandboxes", json=body)
        _raise_for(response)
        return cls(response.json()["sandbox_id"], http)

    @classmethod
    def connect(
        cls, sandbox_id: str, *, api_url: str | None = None, api_key: str | None = None, request_timeout: float = 600
    ) -> Sandbox:
        sandbox = cls(sandbox_id, cls._client(api_url, api_key, request_timeout))
        sandbox.get_info()  # NotFoundException now rather than at first use
        return sandbox

    @classmethod
    def list(
        cls, metadata: dict[str, str] | None = None, *, api_url: str | None = None, api_key: str | None = None
    ) -> list[SandboxInfo]:
        with cls._client(api_url, api_key, 30) as http:
            params = {"metadata": str(httpx.QueryParams(metadata))} if metadata else {}
            response = http.get("/v1/sandboxes", params=params)
            _raise_for(response)
            return [_info(raw) for raw in response.json()["sandboxes"]]

    def _path(self, tail: str = "") -> str:
        return f"/v1/sandboxes/{self.sandbox_id}" + (f"/{tail}" if tail else "")

    def _call(self, method: str, tail: str = "", **kwargs: Any) -> Any:
        response = self._http.request(method, self._path(tail), **kwargs)
        _raise_for(response)
        return response.json() if response.content else None

    def get_info(self) -> SandboxInfo:
        return _info(self._call("GET"))

    def is_running(self) -> bool:
        try:
            return self.get_info().state is SandboxState.RUNNING
        except NotFoundException:
            return False

    def set_timeout(self, timeout: float) -> None:
        self._call("POST", "timeout", json={"timeout": timeout})

    def get_host(self, port: int) -> str:
        """The URL at which the platform serves `port` of this sandbox (the same
        API key is needed there)."""
        return str(self._http.base_url).rstrip("/") + self._path(f"ports/{port}")

    def create_port_link(self, port: int, expires_in: int = 3600) -> dict[str, Any]:
        """A URL opening `port` in a browser without the API key, for `expires_in`
        seconds (at most a day) or until this key is revoked: {"url", "path_url",
        "expires_at"}. Whoever holds it reaches the port as this key would."""
        return dict(self._call("POST", f"port-links/{port}", json={"expires_in": expires_in}))

    def get_metrics(self) -> dict[str, Any]:
        return dict(self._call("GET", "metrics"))

    def pause(self) -> None:
        self._call("POST", "pause")

    def resume(self) -> None:
        self._call("POST", "resume")

    def kill(self) -> bool:
        """Stops the sandbox; False if it was already gone."""
        try:
            self._call("DELETE")
        except NotFoundException:
            return False
        return True

    def run_code(
        self,
        code: str,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        timeout: float | None = 300,
    ) -> Execution:
        """Runs Python in the sandbox's interpreter; variables persist between calls."""
        body = {"code": code, "timeout": timeout, "stream": True}
        with self._http.stream("POST", self._path("code"), json=body) as response:
            _raise_for(response)
            for event in _events(response):
                handler = {"stdout": on_stdout, "stderr": on_stderr}.get(event["type"])
                if handler is not None:
                    handler(event["data"])
                elif event["type"] == "result":
                    return _execution(event)
        raise SandboxException("the interpreter's stream ended without a result")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.close()
