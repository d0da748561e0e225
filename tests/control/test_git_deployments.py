"""Git deployments: a repository made in the test, built at a branch or a commit
from its Containerfile or as a Python project, served like any image deployment;
sources outside the operator's allow-list, unknown refs and unbuildable trees
are refused at create."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_images import CONTAINERFILE, busybox_context, podman_usable, remove_image
from control_helpers import Env

from tramontane.control.baseimage import python_base_context
from tramontane.control.buildpack import plan_build, python_containerfile
from tramontane.control.containers import ImageError
from tramontane.control.gitsource import check_allowed
from tramontane.control.images import ImagesConfig
from tramontane.errors import Forbidden

needs_podman = pytest.mark.skipif(not podman_usable(), reason="needs podman and busybox-static")

APP = '''\
import http.server, os

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("GREETING", "hello").encode() + b" from python"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Hello).serve_forever()
'''


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.test", *args],
        cwd=repo, capture_output=True, text=True, check=True, timeout=30,
    )
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def busybox_repo(tmp_path: Path) -> Path:
    repo = busybox_context(tmp_path / "repos" / "site")
    (repo / "Containerfile").write_text(CONTAINERFILE)
    git(repo, "init", "-q", "-b", "main")
    return repo


@pytest.fixture(scope="module")
def python_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tag = "localhost/tramontane-test/python-base:latest"
    context = python_base_context(tmp_path_factory.mktemp("base"))
    subprocess.run(
        ["podman", "--runtime", "crun", "build", "--pull=never", "-q", "-t", tag, str(context)],
        check=True, capture_output=True, timeout=300,
    )
    yield tag
    remove_image(tag)


def git_spec(name: str, repository: Path | str, **git_fields) -> dict:
    return {
        "name": name,
        "kind": "image",
        "git": {"repository": str(repository), **git_fields},
        "resources": {"cpu": 0.5, "memory_mb": 128},
        "health_check": {"type": "http", "path": "/", "grace_period_s": 20, "interval_s": 0.2},
        "scaling": {"min_replicas": 1, "max_replicas": 1},
    }


def allow(env: Env, *sources: Path | str, base_image: str = "localhost/none:latest") -> None:
    env.plane.images.config = ImagesConfig(git_allowed=tuple(map(str, sources)), base_image=base_image)


@needs_podman
async def test_containerfile_repo_at_a_branch_and_at_a_commit(env: Env, busybox_repo: Path) -> None:
    first = commit_all(busybox_repo, "first")
    (busybox_repo / "www" / "index.html").write_text("second version\n")
    second = commit_all(busybox_repo, "second")
    allow(env, busybox_repo.parent)

    latest = await env.client.post("/v1/deployments", json=git_spec("site", busybox_repo, branch="main"))
    assert latest.status_code == 201, latest.text
    image = latest.json()["spec"]["image"]
    assert image == f"localhost/tramontane/builds/{env.workspace_id}/site:{second[:12]}"
    assert (await env.client.get("/serve/site/")).text == "second version\n"

    pinned = await env.client.post("/v1/deployments", json=git_spec("pinned", busybox_repo, commit=first[:10]))
    assert pinned.status_code == 201, pinned.text
    assert (await env.client.get("/serve/pinned/")).text == "hello from a container\n"

    for name in ("site", "pinned"):
        await env.client.delete(f"/v1/deployments/{name}")
    remove_image(image)
    remove_image(pinned.json()["spec"]["image"])


@needs_podman
async def test_python_project_is_built_on_the_base_image(env: Env, tmp_path: Path, python_base: str) -> None:
    repo = tmp_path / "repos" / "hello"
    repo.mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[project]\nname = "hello"\nversion = "1.0"\ndependencies = []\n')
    (repo / "app.py").write_text(APP)
    (repo / "Procfile").write_text("web: python3 app.py\n")
    git(repo, "init", "-q", "-b", "main")
    commit_all(repo, "hello")
    allow(env, f"file://{repo.parent}", base_image=python_base)

    body = {**git_spec("hello", f"file://{repo}"), "env": {"GREETING": "bonjour"}}
    created = await env.client.post("/v1/deployments", json=body)
    assert created.status_code == 201, created.text
    answer = await env.client.get("/serve/hello/")
    assert answer.status_code == 200 and answer.text == "bonjour from python"
    await env.client.delete("/v1/deployments/hello")
    remove_image(created.json()["spec"]["image"])


@needs_podman
async def test_bad_sources_are_refused_at_create(env: Env, busybox_repo: Path, tmp_path: Path) -> None:
    commit_all(busybox_repo, "first")
    allow(env, busybox_repo.parent)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refused = await env.client.post("/v1/deployments", json=git_spec("out", elsewhere))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "git_source_forbidden"

    no_branch = await env.client.post("/v1/deployments", json=git_spec("nob", busybox_repo, branch="nope"))
    assert no_branch.status_code == 400 and no_branch.json()["error"]["code"] == "git_ref_not_found"

    (busybox_repo / "Containerfile").unlink()
    commit_all(busybox_repo, "no build file")
    bare = await env.client.post("/v1/deployments", json=git_spec("bare", busybox_repo))
    assert bare.status_code == 400 and bare.json()["error"]["code"] == "unbuildable_source"

    both = await env.client.post("/v1/deployments", json=git_spec("both", busybox_repo, branch="main", commit="abcd"))
    assert both.status_code == 422
    assert (await env.client.get("/v1/deployments")).json()["data"] == []


def test_allow_list_matches_whole_prefixes(tmp_path: Path) -> None:
    allowed = ("https://git.bank.example/team", str(tmp_path / "repos"))
    check_allowed("https://git.bank.example/team/app.git", allowed)
    check_allowed(str(tmp_path / "repos" / "app"), allowed)
    check_allowed(f"file://{tmp_path}/repos/app", allowed)
    for refused in (
        "https://git.bank.example/team-evil/app.git",
        "https://git.bank.example.evil/team/app.git",
        str(tmp_path / "repos" / ".." / "secrets"),
        "--upload-pack=touch /tmp/x",
        "ext::sh -c touch% /tmp/x",
    ):
        with pytest.raises(Forbidden):
            check_allowed(refused, allowed)


def test_generated_containerfile_installs_declared_dependencies(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "a"\ndependencies = ["httpx>=0.27", "rich"]\n')
    (tmp_path / "Procfile").write_text("worker: python3 w.py\nweb: python3 -m a --port $PORT\n")
    text = python_containerfile(tmp_path, "localhost/base:1", has_command=False)
    assert text.startswith("FROM localhost/base:1\n")
    assert 'RUN ["python3", "-m", "pip", "install", "--no-cache-dir", "httpx>=0.27", "rich"]' in text
    assert 'CMD ["/bin/sh", "-c", "python3 -m a --port $PORT"]' in text

    (tmp_path / "requirements.txt").write_text("fastapi\n")
    assert '"-r", "requirements.txt"]' in python_containerfile(tmp_path, "b", has_command=False)

    (tmp_path / "Procfile").unlink()
    with pytest.raises(ImageError, match="start command"):
        python_containerfile(tmp_path, "b", has_command=False)
    assert "CMD" not in python_containerfile(tmp_path, "b", has_command=True)

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ImageError):
        plan_build(tmp_path, scratch, "b", containerfile="../outside/Containerfile")
