"""The whole platform behind uvicorn on loopback (as `tramontane up` assembles it)
and a headless Chromium driven by Playwright, for the console's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from console_helpers import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, Platform
from live_app import serve_in_thread

from tramontane.cli.up import load_models
from tramontane.control.plane import ControlPlane
from tramontane.finetune.service import FineTuning
from tramontane.inference import default_model_specs
from tramontane.platform.app import create_app
from tramontane.sandbox import ManagerConfig, SandboxManager
from tramontane.tenancy import Tenancy


# Module-scoped, not session-scoped: the platform's server and Playwright's sync API (which
# holds a running event loop in the main thread while it is open) must be gone before the
# other folders' asyncio tests run.
@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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
