"""The default template: what a sandbox that names no template gets.

With the bundled "data" template built (`make install`), such a sandbox runs on
it, from the warm pool, with numpy, pandas and matplotlib; `base` (the host's
/usr) stays available by name. Without it, the sandbox gets base and says so;
a build that fails says why in `GET /v1/templates`."""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tramontane.sandbox import ManagerConfig, SandboxManager, SandboxSpec, bwrap
from tramontane.sandbox import default_template as default_module
from tramontane.sandbox.default_template import DefaultStatus, DefaultTemplate
from tramontane.sandbox.microvm import MicroVMHost
from tramontane.sandbox.templates import Template, TemplateStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

PLOT = """
import numpy as np, pandas as pd, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
frame = pd.DataFrame({"x": np.arange(10), "y": np.arange(10) ** 2})
frame.plot(x="x", y="y")
plt.savefig("squares.png")
print(np.__version__, pd.__version__, matplotlib.__version__, int(frame.y.sum()))
"""


def _config(templates_dir: Path, state_dir: Path, **changes: object) -> ManagerConfig:
    settings: dict[str, object] = dict(
        max_sandboxes=8, pool_size=1, microvm_pool_size=0, reap_interval_s=0.1,
        templates_dir=str(templates_dir), state_dir=str(state_dir),
    )  # fmt: skip
    return ManagerConfig(**{**settings, **changes})  # type: ignore[arg-type]


def _wait_pooled(manager: SandboxManager, pool: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while not manager._pools.get(pool):
        assert time.monotonic() < deadline, f"the pool of {pool} did not fill"
        time.sleep(0.05)
    return [sandbox_id for sandbox_id, _ in manager._pools[pool]]


def test_a_sandbox_naming_no_template_gets_the_data_stack(live, data_template: Template) -> None:
    sandbox = live.create(timeout=120)
    try:
        info = sandbox.get_info()
        assert info.template == "data" and info.warnings == []
        result = sandbox.commands.run(f"python3 -c '{PLOT}'", timeout=120)
        numpy_version, pandas_version, mpl_version, total = result.stdout.split()
        assert total == "285" and numpy_version and pandas_version and mpl_version
        assert sandbox.files.read("squares.png", format="bytes").startswith(PNG_MAGIC)
        # The template's own tree, not the host's: bubblewrap is the host's alone.
        assert sandbox.commands.run("test -e /usr/bin/bwrap || echo absent").stdout.strip() == "absent"
        assert sandbox.commands.run("printenv MPLBACKEND").stdout.strip() == "Agg"
    finally:
        sandbox.kill()


def test_the_code_interpreter_charts_with_pandas(live, data_template: Template) -> None:
    sandbox = live.create(timeout=120)
    try:
        sandbox.run_code("import pandas as pd\nframe = pd.DataFrame({'a': [1, 2, 3], 'b': [3, 1, 2]})")
        execution = sandbox.run_code("import matplotlib.pyplot as plt\nframe.plot.bar()\nframe.b.sum()", timeout=120)
        assert execution.error is None
        assert execution.text == "6"
        pngs = [r.png for r in execution.results if r.png]
        assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    finally:
        sandbox.kill()


def test_default_sandboxes_come_from_the_warm_pool(live, data_template: Template) -> None:
    pooled = _wait_pooled(live.manager, data_template.id)
    assert not live.manager._pools.get("base")  # tier 1's pool is the default's alone
    sandbox = live.create(timeout=60)
    try:
        assert sandbox.sandbox_id in pooled
        assert live.manager.get(sandbox.sandbox_id).runtime.rootfs == data_template.rootfs
    finally:
        sandbox.kill()
    # Named by name or id, the same template comes from the same pool.
    pooled = _wait_pooled(live.manager, data_template.id)
    named = live.create(template=data_template.id, timeout=60)
    try:
        assert named.sandbox_id in pooled and named.get_info().template == data_template.id
    finally:
        named.kill()


def test_a_default_sandbox_resumes_on_the_same_template(live, data_template: Template) -> None:
    sandbox = live.create(timeout=120)
    try:
        sandbox.files.write("kept.txt", "yes")
        sandbox.pause()
        sandbox.resume()
        assert sandbox.get_info().template == "data" and sandbox.files.read("kept.txt") == "yes"
        assert live.manager.get(sandbox.sandbox_id).runtime.rootfs == data_template.rootfs
        assert sandbox.commands.run("python3 -c 'import pandas'").exit_code == 0
    finally:
        sandbox.kill()


def test_base_stays_available_by_name(live, data_template: Template) -> None:
    sandbox = live.create(template="base", timeout=60)
    try:
        assert sandbox.get_info().template == "base"
        assert sandbox.commands.run("test -e /usr/bin/bwrap && echo host").stdout.strip() == "host"
    finally:
        sandbox.kill()


def test_the_template_list_says_what_the_default_is(live, data_template: Template) -> None:
    with live.http() as http:
        listed = http.get("/v1/templates").json()
    assert listed["default"] == {
        "name": "data", "status": "ready", "serving": "data", "error": None, "build_started_at": None
    }  # fmt: skip
    defaults = [t for t in listed["data"] if t["default"]]
    assert [(t["id"], t["status"]) for t in defaults] == [(data_template.id, "ready")]


def test_without_the_default_built_sandboxes_get_base_and_say_so(
    serve_sandboxes, data_template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(default_module, "RECHECK_S", 0.2)
    store = tmp_path / "templates"
    with serve_sandboxes(SandboxManager(_config(store, tmp_path / "state"))) as served:
        assert served.manager.default_template.status is DefaultStatus.MISSING
        sandbox = served.create(timeout=60)
        info = sandbox.get_info()
        assert info.template == "base"
        assert info.warnings == [
            "the default template 'data' is not built on this server; this sandbox runs on 'base' (the host's /usr)"
        ]
        sandbox.kill()
        with served.http() as http:
            listed = http.get("/v1/templates").json()
            assert listed["default"]["status"] == "missing" and listed["default"]["serving"] == "base"
            assert listed["data"] == []
            assert http.get("/v1/templates/data").status_code == 404
        _wait_pooled(served.manager, "base")

        # Built meanwhile (by an operator's `tramontane sandbox template build data`): picked up
        # without a restart, and the pool turns over to it.
        store.mkdir(mode=0o711)
        scratch = store / ".build-copy"  # then renamed, as a build is: never seen half-made
        shutil.copytree(data_template.rootfs.parent, scratch, copy_function=os.link, symlinks=True)
        os.rename(scratch, store / data_template.id)
        pooled = _wait_pooled(served.manager, data_template.id)
        assert "base" not in served.manager._pools
        sandbox = served.create(timeout=60)
        try:
            info = sandbox.get_info()
            assert (info.template, info.warnings) == ("data", [])
            assert sandbox.sandbox_id in pooled
            assert sandbox.commands.run("python3 -c 'import pandas; print(pandas.__name__)'").stdout == "pandas\n"
            # This store lies below a directory only root may search (pytest's 0700 folder, as
            # root's home is): each launch binds the tree in a mount namespace of its own, and
            # the host's mounts stay as they were.
            assert not bwrap.searchable_by_all(store)
            assert os.listdir(bwrap.TEMPLATE_VIEW) == []
            assert bwrap.TEMPLATE_VIEW not in Path("/proc/self/mountinfo").read_text()
        finally:
            sandbox.kill()
        cold = served.create(timeout=60, disk_mb=200, envs=TENANT_ENV)  # through the root helpers
        try:
            _assert_env_kept_off_the_host(served.manager, cold, from_data=True)
        finally:
            cold.kill()


def test_a_failed_build_is_reported_and_sandboxes_get_base(serve_sandboxes, tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    store = tmp_path / "not-a-folder" / "templates"  # the build cannot even make its folder
    config = _config(store, tmp_path / "state", pool_size=0, build_default_template=True)
    with serve_sandboxes(SandboxManager(config)) as served:
        default = served.manager.default_template
        deadline = time.monotonic() + 60
        while default.status is DefaultStatus.BUILDING:
            assert time.monotonic() < deadline, "the build did not end"
            time.sleep(0.1)
        assert default.status is DefaultStatus.FAILED and "Not a directory" in (default.error or "")
        with served.http() as http:
            listed = http.get("/v1/templates").json()
            assert listed["default"]["status"] == "failed" and listed["default"]["serving"] == "base"
            [entry] = listed["data"]
            assert (entry["name"], entry["status"], entry["default"]) == ("data", "failed", False)
            assert "Not a directory" in entry["error"]
            assert http.get("/v1/templates/data").json()["status"] == "failed"
        sandbox = served.create(timeout=60)
        try:
            info = sandbox.get_info()
            assert info.template == "base" and "failed to build" in info.warnings[0]
        finally:
            sandbox.kill()


def test_base_as_the_default_says_nothing(serve_sandboxes, tmp_path: Path) -> None:
    config = _config(tmp_path / "templates", tmp_path / "state", default_template="base")
    with serve_sandboxes(SandboxManager(config)) as served:
        sandbox = served.create(timeout=60)
        try:
            assert (sandbox.get_info().template, sandbox.get_info().warnings) == ("base", [])
        finally:
            sandbox.kill()
        with served.http() as http:
            assert http.get("/v1/templates").json()["default"] == {
                "name": "base", "status": "builtin", "serving": "base", "error": None, "build_started_at": None
            }  # fmt: skip


def test_plain_microvm_follows_the_default(data_template: Template, tmp_path: Path) -> None:
    """Which template and pool a plain "microvm" request gets, without booting a VM
    (test_microvm_snapshots.py boots one on the default and pauses it to disk)."""
    store = data_template.rootfs.parents[1]
    plain = SandboxSpec(template="microvm")
    # A stand-in for a host that can run VMs: only its presence decides the pools here.
    host = MicroVMHost("qemu-system-x86_64", None, "kvm")  # type: ignore[arg-type]

    built = SandboxManager(_config(store, tmp_path / "state", microvm_pool_size=1))
    spec, template, warnings = built._resolve_template(plain)
    assert template == data_template
    assert (spec.template, warnings) == ("microvm:data", [])  # its disk: it pauses to disk
    built._microvm = host
    assert built._pooled_templates()[f"microvm:{template.id}"] == ("microvm:data", template, 1)
    assert "microvm" not in built._pooled_templates()

    missing = SandboxManager(_config(tmp_path / "empty", tmp_path / "state", microvm_pool_size=1))
    spec, template, warnings = missing._resolve_template(plain)
    assert (spec.template, template) == ("microvm", None)
    assert warnings == [
        "the default template 'data' is not built on this server; "
        "this sandbox runs on 'microvm' (the host's /usr over 9p)"
    ]
    missing._microvm = host
    assert missing._pooled_templates()["microvm"] == ("microvm", None, 1)

    base = SandboxManager(_config(store, tmp_path / "state", default_template="base"))
    assert base._resolve_template(plain) == (plain, None, [])  # the operator's choice: said nothing


def test_naming_the_default_while_it_builds_is_a_503_with_retry_after(tmp_path: Path) -> None:
    default = DefaultTemplate("data", TemplateStore(tmp_path), builtin=frozenset({"base"}), fallback="base")
    assert default.unavailable("data") is None  # not building: the ordinary 404 stands
    default.status, default.build_started_at = DefaultStatus.BUILDING, time.time()
    error = default.unavailable("data")
    assert error is not None and error.code == "template_building" and error.retry_after_s == 30
    assert default.unavailable("other") is None


def test_the_build_child_reports_a_cached_build(data_template: Template) -> None:
    """The build child, as the platform runs it."""
    store = data_template.rootfs.parents[1]
    done = subprocess.run(
        [sys.executable, "-c", default_module._CHILD, str(store), "data"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"data ({data_template.id}) already built")


def test_gateways_sharing_a_home_build_the_default_once(serve_sandboxes, data_template: Template, tmp_path: Path) -> None:
    """Another process's build holds the lock: a second build waits for it (then finds
    the template built), and a manager starting meanwhile leaves its scratch folder be."""
    store = data_template.rootfs.parents[1]
    default = DefaultTemplate("data", TemplateStore(store), builtin=frozenset({"base"}), fallback="base")
    with open(store / default_module.BUILD_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert default.built_elsewhere_now()
        waiting = subprocess.Popen(
            [sys.executable, "-c", default_module._CHILD, str(store), "data"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
        assert waiting.poll() is None
        private = tmp_path / "store"
        (private / ".build-in-progress").mkdir(parents=True)
        os.link(store / default_module.BUILD_LOCK, private / default_module.BUILD_LOCK)  # the same lock
        config = _config(private, tmp_path / "state", pool_size=0)
        with serve_sandboxes(SandboxManager(config)):
            assert (private / ".build-in-progress").is_dir()
        fcntl.flock(lock, fcntl.LOCK_UN)
    output, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and "already built" in output
    assert not default.built_elsewhere_now()
    with serve_sandboxes(SandboxManager(config)):
        assert not (private / ".build-in-progress").exists()


@pytest.mark.parametrize("template", ["data", "base"])
def test_a_tenants_environment_never_reaches_host_processes(live, data_template: Template, template: str) -> None:
    """The request's envs (and a template's env) go to the agent over its channel: bwrap,
    and the root helpers that bind a template's view, run on the platform's own only."""
    # disk_mb: started on demand, not from the pool (whose sandboxes started with no tenant).
    sandbox = live.create(template=template, timeout=60, disk_mb=200, envs=TENANT_ENV)
    try:
        _assert_env_kept_off_the_host(live.manager, sandbox, template == "data")
    finally:
        sandbox.kill()


TENANT_ENV = {"LD_PRELOAD": "/nowhere.so", "TENANT_SECRET": "s3"}


def _assert_env_kept_off_the_host(manager: SandboxManager, sandbox, from_data: bool) -> None:
    shown = sandbox.commands.run("printenv TENANT_SECRET LD_PRELOAD MPLBACKEND || true").stdout.split()
    assert shown[:2] == ["s3", "/nowhere.so"] and shown[2:] == (["Agg"] if from_data else [])
    bwrap_pid = manager.get(sandbox.sandbox_id).runtime.process.pid
    host_env = Path(f"/proc/{bwrap_pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in host_env if v.startswith((b"LD_PRELOAD=", b"TENANT_SECRET=", b"MPLBACKEND="))]
