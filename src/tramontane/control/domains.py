"""Custom domains: a request whose Host header is a domain registered on a
deployment goes to that deployment, whatever its path.

A hostname belongs to at most one deployment across all workspaces (the
table's primary key says so, not only this code). The operator's own names
(TRAMONTANE_RESERVED_DOMAINS: the API's hostname, say) and their subdomains
cannot be claimed, nor can `localhost` or an IP address: a tenant must not be
able to take over the platform's own traffic. The table is read once at start
and kept in memory, so routing a request costs one dict lookup."""

from __future__ import annotations

import os
import re

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Conflict, Forbidden, Invalid, NotFound
from ..store import Store
from .models import DomainRow

RESERVED_ENV = "TRAMONTANE_RESERVED_DOMAINS"
# The scope key by which the router knows a request came in on a custom domain.
DOMAIN_SCOPE_KEY = "tramontane.domain"

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_hostname(value: str) -> str:
    """`value` as a lowercase ASCII hostname (internationalised names in their
    IDNA form), without a trailing dot; Invalid when it is not a domain name."""
    hostname = value.strip().rstrip(".").lower()
    try:
        hostname = hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise Invalid(f"'{value}' is not a domain name", code="invalid_domain", param="domain") from None
    labels = hostname.split(".")
    if len(hostname) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise Invalid(f"'{value}' is not a domain name (e.g. api.example.com)", code="invalid_domain", param="domain")
    if labels[-1].isdigit():
        raise Invalid(f"'{value}' is an address, not a domain name", code="invalid_domain", param="domain")
    return hostname


def host_of(scope: Scope) -> str | None:
    """The request's Host header, lowercased, its port removed."""
    for key, value in scope.get("headers", ()):
        if key == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # an IPv6 literal
                return host.split("]", 1)[0] + "]"
            return host.rsplit(":", 1)[0] if ":" in host else host
    return None


def _is_under(hostname: str, reserved: str) -> bool:
    return hostname == reserved or hostname.endswith("." + reserved)


class DomainTable:
    """The registered domains: stored rows and an in-memory index hostname ->
    deployment id, changed together."""

    def __init__(self, store: Store, reserved: tuple[str, ...] | None = None):
        self.store = store
        if reserved is None:
            reserved = tuple(d.strip().lower() for d in os.environ.get(RESERVED_ENV, "").split(",") if d.strip())
        self.reserved = ("localhost", *reserved)
        self._index: dict[str, str] = {}

    def reserve(self, *names: str) -> None:
        """Keeps `names` and their subdomains for the platform (e.g. the name the
        sandboxes' ports are served under)."""
        self.reserved = (*self.reserved, *(n.strip(".").lower() for n in names if n.strip(".")))

    def load(self) -> None:
        with self.store.session() as session:
            self._index = {row.hostname: row.deployment_id for row in session.scalars(select(DomainRow))}

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, hostname: str) -> str | None:
        """The deployment id the hostname belongs to, if any."""
        return self._index.get(hostname)

    def of(self, deployment_id: str) -> list[str]:
        return sorted(h for h, owner in self._index.items() if owner == deployment_id)

    def add(self, workspace_id: str, deployment_id: str, domain: str) -> str:
        hostname = normalize_hostname(domain)
        if any(_is_under(hostname, reserved) for reserved in self.reserved):
            raise Forbidden(f"'{hostname}' is reserved by the platform", code="domain_reserved")
        if self._index.get(hostname) == deployment_id:
            return hostname
        try:
            with self.store.write_session() as session:
                session.add(DomainRow(hostname=hostname, workspace_id=workspace_id, deployment_id=deployment_id))
        except IntegrityError:
            raise Conflict(f"'{hostname}' is already registered", code="domain_taken", param="domain") from None
        self._index[hostname] = deployment_id
        return hostname

    def remove(self, deployment_id: str, domain: str) -> None:
        try:
            hostname = normalize_hostname(domain)
        except Invalid:
            hostname = domain
        if self._index.get(hostname) != deployment_id:
            raise NotFound(f"'{domain}' is not a domain of this deployment", code="domain_not_found")
        with self.store.write_session() as session:
            session.execute(delete(DomainRow).where(DomainRow.hostname == hostname))
        del self._index[hostname]

    def forget(self, deployment_id: str) -> None:
        """Drops a deleted deployment's domains from the index (its rows go with
        the deployment's, by cascade)."""
        self._index = {h: owner for h, owner in self._index.items() if owner != deployment_id}


class DomainRouting:
    """ASGI middleware: requests for a registered domain go to the deployments
    router (which checks the caller's key and workspace); others to the app."""

    def __init__(self, app: ASGIApp, *, domains: DomainTable, router: ASGIApp):
        self.app = app
        self.domains = domains
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(self.domains):
            host = host_of(scope)
            if host is not None and self.domains.lookup(host) is not None:
                await self.router({**scope, "root_path": "", DOMAIN_SCOPE_KEY: host}, receive, send)
                return
        await self.app(scope, receive, send)

