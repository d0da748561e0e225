"""`tramontane chat` and `tramontane bench` against the session's server."""

from __future__ import annotations

from typer.testing import CliRunner

from tramontane.cli import app

runner = CliRunner()


def test_chat(live_server):
    options = ["--api-key", live_server.tenant.key, "--max-tokens", "4", "--system", "Be brief."]
    result = runner.invoke(app, ["chat", "--url", live_server.url, *options], input="Hello!\n/reset\nHi\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output
    assert result.output.count("bot>") == 2


def test_chat_without_a_key(live_server, monkeypatch):
    monkeypatch.delenv("TRAMONTANE_API_KEY", raising=False)
    result = runner.invoke(app, ["chat", "--url", live_server.url])
    assert result.exit_code == 1 and "TRAMONTANE_API_KEY" in result.output


def test_chat_unreachable_server():
    result = runner.invoke(app, ["chat", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_bench(live_server):
    options = ["--api-key", live_server.tenant.key, "-c", "4", "-n", "8", "--max-tokens", "4"]
    result = runner.invoke(app, ["bench", "--url", live_server.url, *options])
    assert result.exit_code == 0, result.output
    assert "200: 8" in result.output
    for figure in ("requests/s", "output tokens/s", "TTFT p50 / p90 / p99", "inter-token latency p50 / p90 / p99"):
        assert figure in result.output
