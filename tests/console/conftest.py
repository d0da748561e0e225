"""The whole platform behind uvicorn on loopback (as `tramontane up` assembles it),
a headless Chromium driven by Playwright, and helpers to sign in to the console
from a browser or from httpx."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from live_app import serve_in_thread

from tramontane.cli.up import load_models
from tramontane.control.plane import ControlPlane
from tramontane.finetune.service import FineTuning
from tramontane.inference import default_model_specs
from tramontane.platform.app import create_app
from tramontane.sandbox import ManagerConfig, SandboxManager
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


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("console-home")
    tenancy = Tenancy.open(f"sqlite:///{home / 'tramontane.db'}", home=home)
    admin_key = tenancy.bootstrap_admin_key()
    assert admin_key is not None
    registry = load_models(default_model_specs())
    sandboxes = SandboxManager(ManagerConfig(pool_size=0, microvm_pool_size=0, max_sandboxes=8))
    plane = ControlPlane(tenancy.store, home=home)
    finetune = FineTuning(tenancy.store, home, registry.checkpoints(), on_model_ready=registry.add_adapter)
    app = create_app(registry, tenancy, sandboxes=sandboxes, control_plane=plane, finetune=finetune)
    with serve_in_thread(app, stop_timeout_s=30) as url:
        yield Platform(url, tenancy, admin_key)
    tenancy.close()


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/install-system-deps.sh installs Debian's)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    print(f"\nconsole screenshots: {SCREENSHOTS}")
    return SCREENSHOTS


@pytest.fixture
def page(browser, platform):
    """A fresh browser context (no cookies), its page failing the test on any script error."""
    context = browser.new_context(base_url=platform.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()


def sign_in(page, key: str) -> None:
    page.goto("/signin")
    page.fill("input[name=api_key]", key)
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_url(re.compile(r"^(?!.*/signin).*$"))


has_bwrap = shutil.which("bwrap") is not None and os.geteuid() == 0
