"""Custom domains: registered on a deployment (unique across workspaces, never the
platform's own names), requests routed by Host header to it, and TLS termination
with the operator's certificate (`tramontane up --tls-cert --tls-key`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from control_helpers import Env, new_plane, spec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from typer.testing import CliRunner

from tramontane.cli import app as cli_app
from tramontane.cli import up
from tramontane.control.domains import normalize_hostname
from tramontane.control.install import install
from tramontane.errors import Invalid
from tramontane.inference import ModelRegistry
from tramontane.store import open_store
from tramontane.tenancy import Capability, Tenancy


def test_hostnames_are_normalized_or_refused() -> None:
    assert normalize_hostname(" Shop.Example.COM. ") == "shop.example.com"
    assert normalize_hostname("bücher.example") == "xn--bcher-kva.example"
    for bad in ("localhost:80", "example", "-a.example.com", "a..b", "10.0.0.1", "::1", "a_b.example", "x" * 64 + ".io"):
        with pytest.raises(Invalid):
            normalize_hostname(bad)


async def test_requests_to_a_domain_reach_its_deployment(env: Env) -> None:
    assert (await env.client.post("/v1/deployments", json=spec("web"))).status_code == 201
    added = await env.client.post("/v1/deployments/web/domains", json={"domain": "App.Example.TEST."})
    assert added.status_code == 201, added.text
    assert added.json() == {"object": "deployment.domain", "domain": "app.example.test", "deployment": "web"}
    listed = await env.client.get("/v1/deployments/web/domains")
    assert [d["domain"] for d in listed.json()["data"]] == ["app.example.test"]

    # Every path on the domain is the deployment's, unchanged (no /serve prefix).
    routed = await env.client.get("/v1/anything?x=1", headers={"host": "app.example.test:8443"})
    assert routed.status_code == 200, routed.text
    assert routed.json()["path"] == "/v1/anything?x=1"
    echoed = (await env.client.get("/headers", headers={"host": "app.example.test", "x-forwarded-host": "evil"})).json()
    assert echoed["headers"]["x-forwarded-host"] == "app.example.test"
    assert echoed["headers"]["x-forwarded-proto"] == "http"
    assert "authorization" not in echoed["headers"]
    # Other hosts still reach the platform's own API.
    assert (await env.client.get("/v1/deployments")).status_code == 200

    # The domain needs the workspace's key, like /serve.
    anonymous = await env.client.get("/", headers={"host": "app.example.test", "authorization": ""})
    assert anonymous.status_code == 401

    removed = await env.client.delete("/v1/deployments/web/domains/app.example.test")
    assert removed.status_code == 200 and removed.json()["deleted"] is True
    gone = await env.client.get("/v1/anything", headers={"host": "app.example.test"})
    assert gone.status_code == 404 and "pid" not in gone.text
    assert (await env.client.delete("/v1/deployments/web/domains/app.example.test")).status_code == 404


async def test_a_domain_belongs_to_one_deployment_across_workspaces(env: Env) -> None:
    assert (await env.client.post("/v1/deployments", json=spec("web"))).status_code == 201
    assert (await env.client.post("/v1/deployments/web/domains", json={"domain": "shop.example.test"})).status_code == 201
    assert (await env.client.post("/v1/deployments/web/domains", json={"domain": "shop.example.test"})).status_code == 201

    _, other_key = env.tenancy.create_tenant("rival", frozenset({Capability.DEPLOY, Capability.INFERENCE}))
    rival = {"authorization": f"Bearer {other_key}"}
    assert (await env.client.post("/v1/deployments", json=spec("copy"), headers=rival)).status_code == 201
    taken = await env.client.post("/v1/deployments/copy/domains", json={"domain": "SHOP.example.test"}, headers=rival)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "domain_taken"
    # The rival's key on the domain: not its deployment, so not found.
    foreign = await env.client.get("/anything", headers={**rival, "host": "shop.example.test"})
    assert foreign.status_code == 404
    # Nor can it see or remove the owner's domains.
    assert (await env.client.get("/v1/deployments/web/domains", headers=rival)).status_code == 404
    assert (await env.client.delete("/v1/deployments/web/domains/shop.example.test", headers=rival)).status_code == 404

    refused = await env.client.post("/v1/deployments/copy/domains", json={"domain": "api.localhost"}, headers=rival)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "domain_reserved"
    for bad in ("localhost", "127.0.0.1"):
        invalid = await env.client.post("/v1/deployments/copy/domains", json={"domain": bad}, headers=rival)
        assert invalid.status_code == 400 and invalid.json()["error"]["code"] == "invalid_domain"


async def test_reserved_domains_and_restart_and_delete(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAMONTANE_RESERVED_DOMAINS", "api.bank.example")
    await env.restart_plane()
    assert (await env.client.post("/v1/deployments", json=spec("web"))).status_code == 201
    env.plane.domains.reserve("sandbox.bank.example.")  # what `up --sandbox-domain` does
    for platform_name in ("api.bank.example", "eu.api.bank.example", "8000-0123abcd.sandbox.bank.example"):
        refused = await env.client.post("/v1/deployments/web/domains", json={"domain": platform_name})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "domain_reserved"
    assert (await env.client.post("/v1/deployments/web/domains", json={"domain": "web.bank.example"})).status_code == 201

    # A restarted control plane routes the domains it finds in the store.
    await env.restart_plane()
    assert (await env.client.get("/x", headers={"host": "web.bank.example"})).json()["path"] == "/x"

    # Deleting the deployment frees its domains.
    assert (await env.client.delete("/v1/deployments/web")).status_code == 200
    assert (await env.client.post("/v1/deployments", json=spec("next"))).status_code == 201
    assert (await env.client.post("/v1/deployments/next/domains", json={"domain": "web.bank.example"})).status_code == 201


def self_signed(folder: Path, *names: str) -> tuple[Path, Path]:
    """A certificate for `names` and 127.0.0.1, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@contextlib.contextmanager
def serving(tmp_path: Path, tls: bool) -> Iterator[tuple[str, str, Path]]:
    """The control plane's app served on loopback by uvicorn, over TLS with
    `tramontane up`'s TLS options when `tls`; yields its URL, a key and the certificate."""
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tenancy = Tenancy(store, home=tmp_path)
    _, key = tenancy.create_tenant("tls", frozenset({Capability.DEPLOY, Capability.INFERENCE}))
    cert, private_key = self_signed(tmp_path, "app.example.test")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    plane = new_plane(store, tmp_path)
    app = FastAPI()
    tenancy.install(app)
    install(app, plane, tenancy)
    options = up.tls_options(cert, private_key) if tls else {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))

    async def serve() -> None:
        await plane.start()
        try:
            await server.serve()
        finally:
            await plane.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        threading.Event().wait(0.01)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", key, cert
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        store.close()


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    with serving(tmp_path, tls=True) as served:
        yield served


def test_domains_cli(tmp_path: Path) -> None:
    with serving(tmp_path, tls=False) as (url, key, _):
        options = ["--url", url, "--api-key", key]
        httpx.post(f"{url}/v1/deployments", json=spec("web"), headers={"authorization": f"Bearer {key}"})
        runner = CliRunner()
        added = runner.invoke(cli_app, ["domains", "add", "web", "Shop.Example.test", *options])
        assert added.exit_code == 0 and "shop.example.test -> web" in added.output, added.output
        assert runner.invoke(cli_app, ["domains", "ls", "web", *options]).output.split() == ["shop.example.test"]
        assert runner.invoke(cli_app, ["domains", "rm", "web", "shop.example.test", *options]).exit_code == 0
        missing = runner.invoke(cli_app, ["domains", "rm", "web", "shop.example.test", *options])
        assert missing.exit_code == 1 and "not a domain of this deployment" in missing.output


def test_tls_termination_with_the_operators_certificate(https_server: tuple[str, str, Path]) -> None:
    url, key, cert = https_server
    trusted = ssl.create_default_context(cafile=str(cert))
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, verify=trusted, timeout=30) as https:
        assert https.post("/v1/deployments", json=spec("web")).status_code == 201
        assert https.post("/v1/deployments/web/domains", json={"domain": "app.example.test"}).status_code == 201
        routed = https.get("/headers", headers={"host": "app.example.test"})
        assert routed.status_code == 200, routed.text
        assert routed.json()["headers"]["x-forwarded-proto"] == "https"
        assert https.get("/serve/web/x").json()["path"] == "/x"
        https.delete("/v1/deployments/web")
    # A client that does not trust the certificate is refused the connection.
    with httpx.Client(base_url=url, timeout=30) as untrusting, pytest.raises(httpx.ConnectError):
        untrusting.get("/v1/deployments")
    # And plain HTTP on the TLS port gets no answer.
    with httpx.Client(base_url=url.replace("https", "http"), timeout=30) as plain, pytest.raises(httpx.HTTPError):
        plain.get("/v1/deployments")


def test_up_checks_the_tls_pair_before_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path))
    monkeypatch.delenv("TRAMONTANE_DATABASE_URL", raising=False)
    served: list[dict] = []
    monkeypatch.setattr(up, "load_models", lambda *args, **kwargs: ModelRegistry())
    apps: list = []
    monkeypatch.setattr(up.uvicorn, "run", lambda app, **options: (served.append(options), apps.append(app)))
    cert, key = self_signed(tmp_path, "api.example.test")
    runner = CliRunner()

    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    ok = runner.invoke(cli_app, ["up", *tls, "--sandbox-domain", "sbx.example.test"])
    assert ok.exit_code == 0, ok.output
    assert "https://127.0.0.1:8000" in ok.output
    assert served[-1]["ssl_certfile"] == str(cert) and served[-1]["ssl_keyfile"] == str(key)
    # The sandboxes' port names cannot be claimed by a deployment.
    assert "sbx.example.test" in apps[-1].state.control_plane.domains.reserved

    alone = runner.invoke(cli_app, ["up", "--tls-cert", str(cert)])
    assert alone.exit_code == 2 and "go together" in alone.output
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    broken = runner.invoke(cli_app, ["up", "--tls-cert", str(garbage), "--tls-key", str(key)])
    assert broken.exit_code == 1 and "cannot use" in broken.output
    assert len(served) == 1
