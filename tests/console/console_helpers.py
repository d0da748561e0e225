"""What the console's tests share: the platform under test, signing in from httpx
or a browser, waiting on a page under the console's CSP, screenshots, and usage
records to chart. (Not in conftest.py: test modules import these by name, and
several test folders have a conftest module.)"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tramontane.tenancy import Tenancy

CHROMIUM = os.environ.get("TRAMONTANE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
ALL = ("inference", "deploy", "sandbox", "fine-tune")
_SIGNIN_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_CSRF = re.compile(r'data-csrf="([^"]+)"')


@dataclass
class Tenant:
    workspace_id: str
    key_id: str
    key: str


@dataclass
class Platform:
    url: str
    tenancy: Tenancy
    admin_key: str

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/v1/admin", headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30
        )

    def create_key(self, workspace_id: str, capabilities: tuple[str, ...]) -> Tenant:
        with self.admin() as admin:
            body = {"name": "console", "capabilities": capabilities}
            response = admin.post(f"/workspaces/{workspace_id}/keys", json=body)
        response.raise_for_status()
        return Tenant(workspace_id, response.json()["id"], response.json()["key"])

    def create_tenant(self, name: str, capabilities: tuple[str, ...] = ALL) -> Tenant:
        with self.admin() as admin:
            response = admin.post("/workspaces", json={"name": name})
        response.raise_for_status()
        return self.create_key(response.json()["id"], capabilities)

    def revoke(self, key_id: str) -> None:
        with self.admin() as admin:
            admin.delete(f"/keys/{key_id}").raise_for_status()

    def session(self, key: str) -> ConsoleClient:
        """An httpx client signed in to the console with `key`."""
        client = ConsoleClient(base_url=self.url, timeout=60, follow_redirects=False)
        form = client.get("/signin")
        token = _SIGNIN_TOKEN.search(form.text).group(1)
        signed_in = client.post("/signin", data={"api_key": key, "csrf_token": token})
        assert signed_in.status_code == 303, signed_in.text
        page = client.get("/usage")
        assert page.status_code == 200, page.text
        client.csrf = _CSRF.search(page.text).group(1)
        return client


class ConsoleClient(httpx.Client):
    csrf: str = ""

    def post_form(self, url: str, data: dict | None = None, **kwargs) -> httpx.Response:
        return self.post(url, data={**(data or {}), "csrf_token": self.csrf}, **kwargs)


def sign_in(page, key: str) -> None:
    page.goto("/signin")
    page.fill("input[name=api_key]", key)
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_url(re.compile(r"^(?!.*/signin).*$"))


has_bwrap = shutil.which("bwrap") is not None and os.geteuid() == 0


def wait_until(page, predicate: str, timeout: float = 30.0) -> None:
    """Polls `predicate` (a JS function) until true. Playwright's wait_for_function
    compiles its predicate with eval, which the console's CSP rightly forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {predicate}"
        page.wait_for_timeout(100)


def shot(page, screenshots, name: str) -> None:
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


def no_script_errors(page) -> None:
    # Errors the page itself raised or logged (a CSP violation is one), bar the
    # API answers a test provokes on purpose.
    unexpected = [e for e in page.errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected


def seed_usage(platform: Platform, tenant, *, records: int, days: int) -> None:
    """Usage records spread over the last `days` days, as the meter writes them."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from tramontane.store import UsageRecord

    now = datetime.now(UTC)
    rows = []
    for i in range(records):
        at = now - timedelta(days=i % days, minutes=i)
        rows.append({
            "workspace_id": tenant.workspace_id, "api_key_id": tenant.key_id, "created_at": at, "day": at.date(),
            "model": ("smollm2-135m-instruct", "all-minilm-l6-v2")[i % 2], "request_id": f"seed-{time.time_ns()}-{i}",
            "prompt_tokens": 10 + i % 7, "completion_tokens": 20 + i % 11, "latency_ms": 100.0 + i,
            "energy_wh": 0.001 * (1 + i % 3), "energy_source": "estimate",
        })
    with platform.tenancy.store.write() as connection:
        connection.execute(insert(UsageRecord), rows)
