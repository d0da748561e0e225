"""What the plane asks of a running replica over HTTP, shared by the backends
whose replicas listen on a host and port: health probes and a model replica's
sleep and wake calls."""

from __future__ import annotations

import httpx

from ..health import probe
from ..spec import HealthCheck
from .base import ReplicaHandle

# Sleeping and waking are loopback calls and a signal: seconds mean it is stuck.
_CONTROL_CALL_TIMEOUT_S = 10.0


class HttpReplicaCalls:
    """Mixed into a backend: one connection pool for all its replicas' checks."""

    _calls_client: httpx.AsyncClient | None = None

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._calls_client is None:
            self._calls_client = httpx.AsyncClient()
        return self._calls_client

    async def probe(self, handle: ReplicaHandle, check: HealthCheck) -> bool:
        return await probe(check, handle.host, handle.port, self._http)

    async def control(self, handle: ReplicaHandle, action: str, token: str) -> None:
        try:
            response = await self._http.post(
                f"http://{handle.host}:{handle.port}/control/{action}",
                headers={"authorization": f"Bearer {token}"},
                timeout=_CONTROL_CALL_TIMEOUT_S,
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise OSError(f"{action} failed: {exc}") from exc

    async def close_calls(self) -> None:
        if self._calls_client is not None:
            await self._calls_client.aclose()
            self._calls_client = None
