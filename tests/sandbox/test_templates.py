"""Templates: specs and Containerfiles, the build (apt's message on a bad
package, nothing half-built left), the tree's privileges stripped, and
sandboxes started from a template through the API and the SDK."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

from typing import TYPE_CHECKING

import httpx
import pytest

from tramontane.sandbox import Sandbox
from tramontane.sandbox.errors import InvalidArgument, Unprocessable
from tramontane.sandbox.templates import (
    Template,
    TemplateBuildFailed,
    TemplateSpec,
    TemplateStore,
    from_containerfile,
    from_dict,
    load,
)
from tramontane.sandbox.templates.build import privileged_entries, resolve_inside, strip_privileges, write_files

if TYPE_CHECKING:
    from conftest import LiveSandboxes

SMALL_TEMPLATE_SPEC = Path(__file__).with_name("templates") / "small.toml"  # what the small_template fixture builds

# -- specs (no build)


def test_a_toml_spec_reads_every_field() -> None:
    spec = load(SMALL_TEMPLATE_SPEC)
    assert spec.name == "test-small" and spec.apt == ("jq",) and spec.pip == ("tabulate==0.9.0",)
    assert spec.files["/usr/local/bin/hello"].mode == 0o755 and spec.env == {"GREETING": "from-template"}
    assert spec.packages() == ["python3", "jq"]  # the agent's interpreter is always there


def test_the_content_hash_follows_the_content_and_the_owner() -> None:
    spec = load(SMALL_TEMPLATE_SPEC)
    assert spec.content_hash() == load(SMALL_TEMPLATE_SPEC).content_hash()
    assert spec.content_hash() != spec.content_hash("ws_other")
    changed = from_dict({"name": "test-small", "apt": ["jq", "curl"]})
    assert changed.content_hash() != from_dict({"name": "test-small", "apt": ["jq"]}).content_hash()
    # The order of Debian packages does not matter; the name does not change the tree's id... but is kept.
    assert from_dict({"name": "a", "apt": ["jq", "curl"]}).content_hash() == from_dict(
        {"name": "a", "apt": ["curl", "jq"]}
    ).content_hash()


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"name": "base"}, "name"),
        ({"name": "Bad Name"}, "name"),
        ({"name": "t", "base": "ubuntu:24.04"}, "base"),
        ({"name": "t", "apt": ["jq; rm -rf /"]}, "apt"),
        ({"name": "t", "apt": ["-oAPT::Get=evil"]}, "apt"),
        ({"name": "t", "pip": ["--index-url=http://evil/"]}, "pip"),
        ({"name": "t", "pip": ["git+https://example.com/x.git"]}, "pip"),
        ({"name": "t", "files": {"relative/path": "x"}}, "files"),
        ({"name": "t", "files": {"/usr/../etc/x": "x"}}, "files"),
        ({"name": "t", "files": {"/home/user/x": "x"}}, "files"),
        ({"name": "t", "files": {"/usr/bin/x": {"content": "x", "mode": "4755"}}}, "files"),
        ({"name": "t", "env": {"1BAD": "x"}}, "env"),
        ({"name": "t", "surprise": 1}, "surprise"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(data: dict, param: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        from_dict(data)
    assert caught.value.param == param


def test_a_containerfile_becomes_a_spec(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('hi')\n")
    spec = from_containerfile(
        "# comment\nFROM debian:bookworm\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends \\\n    jq curl && rm -rf /var/lib/apt/lists/*\n"
        "RUN pip install --no-cache-dir tabulate==0.9.0\n"
        "COPY app.py /opt/app/\nENV MODE=prod OTHER=1\nWORKDIR /opt/app\n"
        'CMD ["python3", "/opt/app/app.py"]\n',
        "web",
        tmp_path,
    )
    assert spec.apt == ("jq", "curl") and spec.pip == ("tabulate==0.9.0",)
    assert spec.files["/opt/app/app.py"].content == b"print('hi')\n"
    assert spec.env == {"MODE": "prod", "OTHER": "1"} and spec.start == "python3 /opt/app/app.py"


def test_a_containerfile_cannot_run_arbitrary_commands_at_build() -> None:
    with pytest.raises(Unprocessable, match=r"line 2: only `apt-get install` and `pip install`.*curl"):
        from_containerfile("FROM debian:bookworm\nRUN curl http://x | sh\n", "t")
    with pytest.raises(Unprocessable, match="line 1: VOLUME is not supported"):
        from_containerfile("VOLUME /data\n", "t")


# -- the tree (no build)


def test_files_are_written_inside_the_tree_even_through_absolute_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "usr/bin").mkdir(parents=True)
    outside.mkdir()
    (root / "bin").symlink_to("usr/bin")
    (root / "etc").symlink_to(str(outside))  # absolute: on the host it would leave the tree
    spec = from_dict({"name": "t", "files": {"/bin/tool": {"content": "x", "mode": "0755"}, "/etc/conf": "y"}})
    write_files(spec, root)
    assert (root / "usr/bin/tool").read_text() == "x" and not list(outside.iterdir())
    assert resolve_inside(root, "/etc/conf") == root / str(outside).lstrip("/") / "conf"
    assert (root / str(outside).lstrip("/") / "conf").read_text() == "y"


def test_setuid_bits_capabilities_and_device_nodes_are_stripped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    for name in ("su", "ping", "plain"):
        (root / "usr/bin" / name).write_text("#!/bin/sh\n")
    os.chmod(root / "usr/bin/su", 0o4755)
    os.chmod(root / "usr/bin/plain", 0o2755)
    # A VFS_CAP_REVISION_2 blob granting CAP_NET_RAW (bit 13), as setcap writes it.
    os.setxattr(root / "usr/bin/ping", "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0))
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert len(privileged_entries(root)) == 5
    stripped = strip_privileges(root)
    assert (stripped.setuid, stripped.capabilities, stripped.special_files) == (2, 1, 2)
    assert privileged_entries(root) == []
    assert os.stat(root / "usr/bin/su").st_mode & 0o7777 == 0o755


# -- builds (Debian mirror, PyPI)


@pytest.mark.slow
def test_a_package_that_does_not_exist_fails_with_apts_message_and_leaves_nothing(tmp_path: Path) -> None:
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed")
    import asyncio

    store = TemplateStore(tmp_path / "store")
    spec = from_dict({"name": "broken", "apt": ["jq", "no-such-package-tramontane"]})
    with pytest.raises(TemplateBuildFailed, match="Unable to locate package no-such-package-tramontane") as caught:
        asyncio.run(store.build(spec))
    assert caught.value.param == "apt"
    assert [p.name for p in (tmp_path / "store").iterdir()] == ["apt-archives"]  # no tree, no scratch folder
    assert store.list() == []


@pytest.mark.slow
def test_the_built_tree_holds_the_spec_and_nothing_privileged(small_template: Template) -> None:
    root = small_template.rootfs
    assert (root / "usr/bin/jq").exists() and (root / "usr/bin/python3").exists()
    assert (root / "usr/local/lib/python3.11/dist-packages/tabulate").is_dir()
    assert (root / "etc/tramontane-template.txt").read_text() == "built from a spec\n"
    assert privileged_entries(root) == []
    assert (root / "etc/hostname").read_text() == "sandbox\n" and not (root / "etc/shadow").exists()


@pytest.mark.slow
def test_a_sandbox_starts_from_the_template(live: LiveSandboxes, small_template: Template) -> None:
    with live.create(template="test-small", timeout=60) as sbx:
        out = sbx.commands.run(
            "hello && jq -n 1+1 && cat /etc/tramontane-template.txt && echo $GREETING && "
            "python3 -c 'import tabulate; print(tabulate.__version__)'"
        ).stdout
        assert out.split("\n")[:5] == ["hello from the template", "2", "built from a spec", "from-template", "0.9.0"]
        assert sbx.run_code("import tabulate; tabulate.tabulate([[1, 2]])").text.count("1  2") == 1
        info = httpx.get(f"{live.url}/v1/sandboxes/{sbx.sandbox_id}").json()
        assert info["template"] == "test-small"


@pytest.mark.slow
def test_template_mounts_are_nosuid_nodev_and_no_setuid_binary_works(
    live: LiveSandboxes, small_template: Template
) -> None:
    with live.create(template=small_template.id, timeout=60) as sbx:
        mounts = {
            fields[4]: fields[5]
            for line in sbx.files.read("/proc/self/mountinfo").splitlines()
            if (fields := line.split())
        }
        for point in ("/usr", "/etc"):
            assert {"ro", "nosuid", "nodev"} <= set(mounts[point].split(",")), point
        assert sbx.commands.run("find / -xdev -perm /6000 -type f 2>/dev/null | head -5").stdout == ""
        assert sbx.commands.run("test -u /usr/bin/su || echo not-setuid").stdout == "not-setuid\n"
        result = sbx.commands.run("su -c id root </dev/null 2>&1 || true")
        assert "uid=0" not in result.stdout


@pytest.mark.slow
def test_the_api_builds_lists_and_guards_templates(live: LiveSandboxes, small_template: Template) -> None:
    spec = {"name": "test-small", **{k: v for k, v in _small_spec_json().items() if k != "name"}}
    with httpx.Client(base_url=live.url, timeout=600) as http:
        started = time.monotonic()
        built = http.post("/v1/templates", json={"spec": spec})
        assert built.status_code == 201, built.text
        assert built.json()["id"] == small_template.id and built.json()["cached"] is True
        assert time.monotonic() - started < 5
        assert built.json()["env"] == ["GREETING"]  # names only
        listed = http.get("/v1/templates").json()["data"]
        assert small_template.id in [t["id"] for t in listed]
        # Another workspace sees the platform's template but cannot delete it.
        other = {"x-tenant": "ws_other"}
        assert http.get(f"/v1/templates/{small_template.id}", headers=other).status_code == 200
        assert http.delete(f"/v1/templates/{small_template.id}", headers=other).status_code == 404
        bad = http.post("/v1/templates", json={"spec": {"name": "t", "pip": ["--evil"]}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "pip"
        refused = http.post("/v1/templates", json={"containerfile": "RUN curl x | sh\n", "name": "t"})
        assert refused.status_code == 400 and "only `apt-get install`" in refused.json()["error"]["message"]
        assert http.get("/v1/templates/nope").status_code == 404
        missing = http.post("/v1/sandboxes", json={"template": "nope"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "template_not_found"
        with live.create(template="test-small", timeout=60):
            busy = http.delete(f"/v1/templates/{small_template.id}")
            assert busy.status_code == 409 and busy.json()["error"]["code"] == "template_in_use"


def _small_spec_json() -> dict:
    spec: TemplateSpec = load(SMALL_TEMPLATE_SPEC)
    return {
        "name": spec.name,
        "apt": list(spec.apt),
        "pip": list(spec.pip),
        "env": spec.env,
        "files": {path: {"content": f.content.decode(), "mode": oct(f.mode)[2:]} for path, f in spec.files.items()},
    }


@pytest.mark.slow
def test_a_custom_template_starts_as_fast_as_the_base(live: LiveSandboxes, small_template: Template) -> None:
    """Creation to first command, unpooled both: the template only changes what is bound."""
    timings: dict[str, list[float]] = {"base": [], small_template.id: []}
    for _ in range(3):
        for template in timings:
            started = time.monotonic()
            with live.create(template=template, timeout=60, disk_mb=200) as sbx:  # disk_mb: never pooled
                sbx.commands.run("true")
                timings[template].append(time.monotonic() - started)
    base, custom = (sorted(t)[1] for t in timings.values())
    assert custom < base * 2 + 0.2, timings  # loose: a shared host; benchmarks/sandbox.py measures


def test_clean_detaches_a_killed_builds_mounts_before_removing_it(tmp_path: Path) -> None:
    """A build killed mid-way leaves the host's /dev/shm bound into its tree:
    removing the tree through that mount would delete the host's files."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("bind mounts need root")
    host_files = tmp_path / "host-shm"
    host_files.mkdir()
    (host_files / "segment").write_text("in use")
    store = TemplateStore(tmp_path / "templates")
    inside = tmp_path / "templates" / ".build-cut-short" / "rootfs" / "dev" / "shm"
    inside.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(host_files), str(inside)], check=True)
    try:
        store.clean()
    finally:
        subprocess.run(["umount", "--lazy", str(inside)], capture_output=True)
    assert (host_files / "segment").read_text() == "in use"
    assert not (tmp_path / "templates" / ".build-cut-short").exists()
