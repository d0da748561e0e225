"""What a template is made of: a base, Debian packages, pip packages, files, an
environment and a start command; read from a short TOML spec or a Containerfile.

Everything here is declarative on purpose: a build installs signed Debian
packages and PyPI wheels and writes files, and never runs a command the spec
supplies, since the build runs as root on the host. A Containerfile is accepted
where it says only that (`RUN apt-get install`, `RUN pip install`, `COPY`, `ENV`,
`CMD`); any other `RUN` is refused with the line that holds it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InvalidArgument, Unprocessable

FORMAT = 1  # bumped when the same spec would build a different tree
# Bases a template may start from: Debian suites the platform's mirror serves.
BASES = {"debian:bookworm": "bookworm", "debian:bookworm-slim": "bookworm", "debian:12": "bookworm"}
DEFAULT_BASE = "debian:bookworm"
# The sandbox agent runs on the template's own /usr/bin/python3.
REQUIRED_PACKAGES = ("python3",)

MAX_PACKAGES = 256
MAX_FILES = 256
MAX_FILES_BYTES = 64 * 1024 * 1024
MAX_START_BYTES = 4096
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
# A requirement by name, extras and versions only: no URL, path or pip option.
_PIP_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?"
    r"((===|==|!=|~=|<=|>=|<|>)[A-Za-z0-9.*+!-]+)?(,(===|==|!=|~=|<=|>=|<|>)[A-Za-z0-9.*+!-]+)*$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Paths a sandbox mounts over (its own /proc, /dev, tmpfs) or that bwrap generates:
# a file written there would never be seen, so asking for one is a mistake.
_SHADOWED = ("/proc", "/sys", "/dev", "/tmp", "/home", "/run", "/etc/passwd", "/etc/group", "/etc/hosts")
BUILTIN_NAMES = ("base", "microvm")


@dataclass(frozen=True)
class TemplateFile:
    content: bytes
    mode: int = 0o644

    def digest(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    base: str = DEFAULT_BASE
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    files: dict[str, TemplateFile] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    start: str | None = None

    @property
    def suite(self) -> str:
        return BASES[self.base]

    def packages(self) -> list[str]:
        """The Debian packages to install, the agent's own needs first."""
        return [*REQUIRED_PACKAGES, *(p for p in self.apt if p not in REQUIRED_PACKAGES)]

    def content_hash(self, owner: str | None = None) -> str:
        """The template's id: equal specs of one owner share a build; another
        owner's identical spec builds its own, so a build's speed says nothing
        about what other tenants built."""
        canonical = {
            "format": FORMAT,
            "owner": owner,
            "suite": self.suite,
            "apt": sorted(set(self.packages())),
            "pip": list(self.pip),
            "files": {path: [f.digest(), f.mode] for path, f in sorted(self.files.items())},
            "env": dict(sorted(self.env.items())),
            "start": self.start,
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:32]

    def validate(self) -> TemplateSpec:
        if not _NAME.match(self.name) or self.name in BUILTIN_NAMES:
            raise InvalidArgument(
                f"template name {self.name!r}: use 1-63 of a-z 0-9 . _ -, not {' or '.join(BUILTIN_NAMES)}",
                param="name",
            )
        if self.base not in BASES:
            raise Unprocessable(f"base {self.base!r} is not offered; use one of {', '.join(BASES)}", param="base")
        if len(self.apt) + len(self.pip) > MAX_PACKAGES:
            raise InvalidArgument(f"at most {MAX_PACKAGES} packages", param="apt")
        for package in self.apt:
            if not _DEBIAN_PACKAGE.match(package):
                raise InvalidArgument(f"{package!r} is not a Debian package name", param="apt")
        for requirement in self.pip:
            if not _PIP_REQUIREMENT.match(requirement):
                raise InvalidArgument(
                    f"{requirement!r}: name a PyPI package, optionally with extras and versions (no URLs or options)",
                    param="pip",
                )
        self._validate_files()
        for name in self.env:
            if not _ENV_NAME.match(name):
                raise InvalidArgument(f"invalid environment variable name {name!r}", param="env")
        if self.start is not None and not 0 < len(self.start.encode()) <= MAX_START_BYTES:
            raise InvalidArgument(f"the start command must be 1-{MAX_START_BYTES} bytes", param="start")
        return self

    def _validate_files(self) -> None:
        if len(self.files) > MAX_FILES or sum(len(f.content) for f in self.files.values()) > MAX_FILES_BYTES:
            raise InvalidArgument(f"at most {MAX_FILES} files and {MAX_FILES_BYTES} bytes of them", param="files")
        for path, file in self.files.items():
            pure = PurePosixPath(path)
            if not pure.is_absolute() or ".." in pure.parts or str(pure) != path or path == "/":
                raise InvalidArgument(f"file path {path!r} must be absolute and normal", param="files")
            if any(path == s or path.startswith(s + "/") for s in _SHADOWED):
                raise InvalidArgument(f"{path!r} is under a path every sandbox mounts its own", param="files")
            if file.mode & ~0o755:
                raise InvalidArgument(f"{path!r}: mode {oct(file.mode)} (0644 or 0755 only)", param="files")


# -- reading specs


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{what} must be a list of strings", param=what)
    return tuple(value)


def _file(value: Any, path: str, context: Path | None) -> TemplateFile:
    if isinstance(value, str):
        return TemplateFile(value.encode())
    if not isinstance(value, dict) or not set(value) <= {"content", "from", "mode"}:
        raise InvalidArgument(f"file {path!r}: a string, or a table with content or from, and mode", param="files")
    mode = value.get("mode", 0o644)
    mode = int(mode, 8) if isinstance(mode, str) else mode
    if "from" in value:
        if context is None:
            raise InvalidArgument(f"file {path!r}: `from` is for specs read from disk; send content", param="files")
        return TemplateFile((context / value["from"]).read_bytes(), mode)
    return TemplateFile(str(value.get("content", "")).encode(), mode)


def from_dict(data: dict[str, Any], context: Path | None = None) -> TemplateSpec:
    """A spec from its TOML or JSON form; `context`: where `from` paths are relative to."""
    known = {"name", "base", "apt", "pip", "files", "env", "start"}
    if unknown := sorted(set(data) - known):
        raise InvalidArgument(f"unknown template field(s): {', '.join(unknown)}", param=unknown[0])
    files = data.get("files", {})
    env = data.get("env", {})
    if not isinstance(files, dict) or not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise InvalidArgument("files and env must be tables (env of strings)", param="files")
    start = data.get("start")
    if start is not None and not isinstance(start, str):
        raise InvalidArgument("start must be a string (a shell command)", param="start")
    return TemplateSpec(
        name=str(data.get("name", "")),
        base=str(data.get("base", DEFAULT_BASE)),
        apt=_strings(data.get("apt", []), "apt"),
        pip=_strings(data.get("pip", []), "pip"),
        files={str(p): _file(v, str(p), context) for p, v in files.items()},
        env=dict(env),
        start=start,
    ).validate()


def from_toml(text: str, context: Path | None = None) -> TemplateSpec:
    try:
        return from_dict(tomllib.loads(text), context)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"the template spec is not valid TOML: {exc}", param="spec") from None


# -- Containerfiles


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, instruction) with continuations joined and comments dropped."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append((start, pending + stripped))
        pending = ""
    if pending:
        lines.append((start, pending))
    return lines


_APT_FLAGS = {"-y", "--yes", "-q", "-qq", "--no-install-recommends", "--assume-yes"}
_PIP_FLAGS = {"--no-cache-dir", "-q", "--quiet", "--upgrade", "-U", "--break-system-packages", "--user"}


def _run_packages(number: int, command: str) -> tuple[list[str], list[str]]:
    """The packages a RUN line installs: `&&`-joined apt-get update/install, pip install."""
    apt: list[str] = []
    pip: list[str] = []
    for step in command.split("&&"):
        words = shlex.split(step)
        if words[:1] == ["apt-get"] and words[1:2] in (["update"], ["clean"]):
            continue
        if words[:2] in (["apt-get", "install"], ["apt", "install"]):
            apt += [w for w in words[2:] if w not in _APT_FLAGS]
        elif words[:2] in (["pip", "install"], ["pip3", "install"]) or words[:4] == ["python3", "-m", "pip", "install"]:
            args = words[4:] if words[0] == "python3" else words[2:]
            pip += [w for w in args if w not in _PIP_FLAGS]
        elif words[:2] == ["rm", "-rf"] and all(w.startswith("/var/lib/apt/lists") for w in words[2:]):
            continue
        else:
            raise Unprocessable(
                f"Containerfile line {number}: only `apt-get install` and `pip install` may be run "
                f"(builds never run other commands as root on the host): {step.strip()!r}",
                param="containerfile",
            )
    return apt, pip


def _exec_form(argument: str) -> str:
    if argument.startswith("["):
        try:
            words = json.loads(argument)
        except json.JSONDecodeError:
            raise InvalidArgument(f"CMD {argument!r}: not a JSON list", param="containerfile") from None
        return shlex.join(str(w) for w in words)
    return argument


def from_containerfile(text: str, name: str, context: Path | None = None) -> TemplateSpec:
    """A spec from a Containerfile of FROM, RUN (installs), COPY, ENV, CMD lines."""
    base, apt, pip = DEFAULT_BASE, [], []
    files: dict[str, TemplateFile] = {}
    env: dict[str, str] = {}
    start = None
    for number, line in _logical_lines(text):
        instruction, _, argument = line.partition(" ")
        instruction, argument = instruction.upper(), argument.strip()
        if instruction == "FROM":
            base = argument.split(" ")[0]
        elif instruction == "RUN":
            more_apt, more_pip = _run_packages(number, argument)
            apt += more_apt
            pip += more_pip
        elif instruction in ("COPY", "ADD"):
            words = shlex.split(argument)
            if context is None or len(words) != 2 or words[0].startswith("--"):
                raise Unprocessable(f"Containerfile line {number}: COPY takes one file and a destination", param="containerfile")
            source = context / words[0]
            destination = words[1] + source.name if words[1].endswith("/") else words[1]
            files[destination] = TemplateFile(source.read_bytes(), 0o755 if source.stat().st_mode & 0o100 else 0o644)
        elif instruction == "ENV":
            if "=" in argument.split(" ")[0]:
                env.update(pair.split("=", 1) for pair in shlex.split(argument))  # type: ignore[misc]
            else:
                key, _, value = argument.partition(" ")
                env[key] = value.strip()
        elif instruction in ("CMD", "ENTRYPOINT"):
            start = _exec_form(argument)
        elif instruction in ("LABEL", "MAINTAINER", "ARG", "SHELL", "EXPOSE", "USER", "WORKDIR"):
            continue  # metadata with no effect on a sandbox's tree
        else:
            raise Unprocessable(f"Containerfile line {number}: {instruction} is not supported", param="containerfile")
    return TemplateSpec(
        name=name, base=base, apt=tuple(apt), pip=tuple(pip), files=files, env=env, start=start
    ).validate()


def load(path: Path, name: str | None = None) -> TemplateSpec:
    """A spec file: TOML (`*.toml`) or a Containerfile/Dockerfile; its folder is the
    build context for `from` and COPY."""
    text = path.read_text()
    if path.suffix == ".toml":
        spec = from_toml(text, path.parent)
        return spec if name is None else TemplateSpec(**{**spec.__dict__, "name": name}).validate()
    return from_containerfile(text, name or path.parent.name.lower(), path.parent)
