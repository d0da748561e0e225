"""`tramontane chat` and `tramontane bench` against the session's server."""

from __future__ import annotations

from typer.testing import CliRunner

from tramontane.cli import app

runner = CliRunner()


def test_chat(live_server):
    result = runner.invoke(
        app, ["chat", "--url", live_server.url, "--max-tokens", "4", "--system", "Be brief."], input="Hello!\n/reset\nHi\n/exit\n"
    )
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output
    assert result.output.count("bot>") == 2


def test_chat_unreachable_server():
    result = runner.invoke(app, ["chat", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_bench(live_server):
    result = runner.invoke(app, ["bench", "--url", live_server.url, "-c", "4", "-n", "8", "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "200: 8" in result.output
    for figure in ("requests/s", "output tokens/s", "TTFT p50 / p90 / p99", "inter-token latency p50 / p90 / p99"):
        assert figure in result.output
