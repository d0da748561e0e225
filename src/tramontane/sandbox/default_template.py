"""The template a sandbox gets when its request names none: the operator's
`default_template` ("data" out of the box: Python's data stack), and its build
when it is missing.

`make install` builds the bundled default once; a server that starts without
it builds it in the background, in a child process (mmdebstrap, then a walk of
a tree over a gigabyte large: none of it belongs in the server's process), one
build at a time, logged. Until it is ready, sandboxes that name no template get
`base` (the host's /usr) and say so: their `template` field is "base" and their
`warnings` say why. A request naming the default template itself while it is
being built gets 503 with a Retry-After, not a 404.

`main` is that child: it builds the bundled template NAME into STORE.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .errors import NotFound, Unavailable
from .templates import Template, TemplateSpec, TemplateStore, load

logger = logging.getLogger("tramontane.sandbox")

BUNDLED = Path(__file__).with_name("templates") / "bundled"
# How often a server whose default is missing looks again (an operator may build
# it meanwhile with `tramontane sandbox template build`).
RECHECK_S = 10.0
BUILD_RETRY_AFTER_S = 30.0
_ERROR_CHARS = 2000
# Held by the build child: gateways sharing $TRAMONTANE_HOME build the default
# once (the others wait, then find it built), and leave its scratch folder be.
BUILD_LOCK = ".default-build.lock"
# The build child's program (not `-m`: the sandbox package imports this module first).
_CHILD = f"import sys; from {__name__} import main; sys.exit(main(sys.argv[1:]))"


class DefaultStatus(StrEnum):
    READY = "ready"  # built: sandboxes naming no template get it
    BUILDING = "building"  # being built; meanwhile they get base
    FAILED = "failed"  # its build failed (`error` says why); they get base
    MISSING = "missing"  # not built, and this server does not build it; they get base
    BUILTIN = "builtin"  # the default is base or microvm: nothing to build


def bundled_spec(name: str) -> TemplateSpec | None:
    path = BUNDLED / f"{name}.toml"
    return load(path) if path.exists() else None


@dataclass(frozen=True)
class DefaultView:
    """What `GET /v1/templates` says of the default."""

    name: str  # the configured default
    status: DefaultStatus
    serving: str  # the template such sandboxes get now
    error: str | None
    build_started_at: float | None


class DefaultTemplate:
    """The configured default: found in the store, or built; and what sandboxes
    naming no template get until then."""

    def __init__(self, name: str, store: TemplateStore, *, builtin: frozenset[str], fallback: str):
        self.name = name
        self.store = store
        self.builtin = name in builtin
        self.fallback = fallback
        self.spec = None if self.builtin else bundled_spec(name)
        self.status = DefaultStatus.BUILTIN if self.builtin else DefaultStatus.MISSING
        self.error: str | None = None
        self.build_started_at: float | None = None
        self._template: Template | None = None
        self._checked_at = 0.0
        self._build: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._on_change: Callable[[], None] = lambda: None

    # -- finding it

    def _find(self) -> Template | None:
        """A bundled default is its bundled spec's exact build (a newer spec is a
        new build, not an older tree of that name); any other is the platform's
        template of that name."""
        wanted = self.spec.content_hash(None) if self.spec is not None else self.name
        try:
            return self.store.resolve(wanted, None)
        except NotFound:
            return None

    def current(self) -> Template | None:
        """The default's template if it is ready (None: sandboxes get the fallback).
        Cheap on the create path: a stat while ready, a look in the store at most
        every RECHECK_S while not."""
        if self.builtin:
            return None
        if self._template is not None:
            if self._template.rootfs.is_dir():
                return self._template
            logger.warning("the default sandbox template %s was deleted; sandboxes get %s", self.name, self.fallback)
            self._template, self.status = None, DefaultStatus.MISSING
            self._on_change()
        now = time.monotonic()
        if self.status is not DefaultStatus.BUILDING and now - self._checked_at >= RECHECK_S:
            self._checked_at = now
            if (found := self._find()) is not None:
                self._ready(found)
        return self._template

    def _ready(self, template: Template) -> None:
        self._template, self.status, self.error = template, DefaultStatus.READY, None
        self._on_change()

    def serving(self) -> str:
        return self.name if self.builtin or self.current() is not None else self.fallback

    def warning(self, fallback: str | None = None, what: str = "the host's /usr") -> str:
        """Said to each sandbox that got the fallback (tier 2's: plain microvm)."""
        why = {
            DefaultStatus.BUILDING: "is being built",
            DefaultStatus.FAILED: "failed to build",
            DefaultStatus.MISSING: "is not built on this server",
        }.get(self.status, "is not ready")
        return f"the default template {self.name!r} {why}; this sandbox runs on {fallback or self.fallback!r} ({what})"

    def health_warning(self) -> str | None:
        """For the platform's /health: None while sandboxes get the default."""
        if self.builtin or self.current() is not None:
            return None
        return f"sandboxes: {self.warning().replace('this sandbox runs', 'sandboxes naming no template run')}"

    def unavailable(self, name: str) -> Unavailable | None:
        """The error for a request naming the default while it is being built."""
        if name != self.name or self.status is not DefaultStatus.BUILDING:
            return None
        return Unavailable(
            f"template {name!r} is being built (started {time.time() - (self.build_started_at or 0):.0f} s ago)",
            code="template_building",
            retry_after_s=BUILD_RETRY_AFTER_S,
        )

    def view(self) -> DefaultView:
        return DefaultView(
            name=self.name,
            status=self.status,
            serving=self.serving(),
            error=self.error,
            build_started_at=self.build_started_at,
        )

    # -- building it

    def built_elsewhere_now(self) -> bool:
        """Whether another process is building the default into this store now."""
        try:
            with open(self.store.root / BUILD_LOCK) as lock:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no store, or no lock: nobody builds
            return False
        return False

    def start(self, *, build: bool, on_change: Callable[[], None]) -> None:
        """Finds the default; if absent and `build`, builds a bundled one in the
        background. `on_change` is called when it becomes ready or goes away."""
        self._on_change = on_change
        if self.builtin:
            return
        self._checked_at = time.monotonic()
        if (found := self._find()) is not None:
            self._ready(found)
            return
        if build and self.spec is not None:
            self.status, self.build_started_at = DefaultStatus.BUILDING, time.time()
            logger.warning(
                "the default sandbox template %s is not built: building it now (a minute or more); "
                "until then sandboxes that name no template get %s",
                self.name, self.fallback,
            )  # fmt: skip
            self._build = asyncio.create_task(self._run_build())
        else:
            logger.warning(
                "the default sandbox template %s is not built (tramontane sandbox template build %s); "
                "sandboxes that name no template get %s",
                self.name, self.name, self.fallback,
            )  # fmt: skip

    async def _run_build(self) -> None:
        started = time.monotonic()
        try:
            # Its own session: stopping the server stops mmdebstrap and apt with it.
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD, str(self.store.root), self.name,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            output, _ = await self._child.communicate()
            code = self._child.returncode
        except OSError as exc:
            output, code = str(exc).encode(), -1
        text = output.decode(errors="replace").strip()
        if self._stopping:
            return
        found = self._find()
        if found is not None:  # also when another process built it meanwhile
            logger.info("the default sandbox template %s is ready (%.0f s): %s", self.name, time.monotonic() - started, text)
            self._ready(found)
            return
        self.status, self.error = DefaultStatus.FAILED, (text or f"the build exited with {code}")[-_ERROR_CHARS:]
        logger.error("the default sandbox template %s failed to build: %s", self.name, self.error)

    async def stop(self) -> None:
        """Stops a build in progress (its scratch folder is removed at the next start)."""
        self._stopping = True
        child = self._child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
        if self._build is not None:
            self._build.cancel()
            await asyncio.gather(self._build, return_exceptions=True)


def main(argv: list[str]) -> int:
    store, name = argv
    spec = bundled_spec(name)
    if spec is None:
        print(f"no bundled template {name!r}", file=sys.stderr)
        return 2
    started = time.monotonic()
    root = Path(store)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / BUILD_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another gateway's build: wait for it, then a cache hit
            template, cached = asyncio.run(TemplateStore(root).build(spec))
    except Exception as exc:  # the parent logs the message: apt's or pip's own words
        print(getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    verb = "already built" if cached else f"built in {time.monotonic() - started:.0f} s"
    print(f"{template.name} ({template.id}) {verb}, {template.size_bytes / 2**20:.0f} MiB")
    return 0

