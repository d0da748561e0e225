"""The console's evaluations page over HTTP: a dataset uploaded from the form is
checked line by line (the API's message shown as is), a good one starts a job
whose page shows its scores, chart and downloads; a red-team run starts from the
same page."""

from __future__ import annotations

import json
import re
import time

from console_helpers import Platform

from tramontane.engine.defaults import DEFAULT_CHAT_MODEL_NAME

CHAT = DEFAULT_CHAT_MODEL_NAME


def jsonl(*lines: dict) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_for_job(client, job_id: str, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        page = client.get(f"/evaluations/{job_id}")
        assert page.status_code == 200, page.text[:300]
        status = re.search(r'id="evaluation-status">(\w+)<', page.text).group(1)
        if status in ("SUCCESS", "FAILED", "CANCELLED"):
            return page.text
        assert time.monotonic() < deadline, f"{job_id} still {status}"
        time.sleep(0.5)


def test_an_evaluation_from_the_console(platform: Platform) -> None:
    inference_only = platform.session(platform.create_tenant("console-evals-no-files", ("inference",)).key)
    assert "needs a key with the fine-tune capability" in inference_only.get("/evaluations").text
    form = {"csrf_token": inference_only.csrf, "targets": CHAT, "metrics": "chrf"}
    assert inference_only.post("/evaluations", files={"file": ("d.jsonl", b"{}")}, data=form).status_code == 403

    tenant = platform.create_tenant("console-evals", ("inference", "fine-tune"))
    client = platform.session(tenant.key)
    page = client.get("/evaluations")
    assert page.status_code == 200 and 'href="/evaluations"' in page.text and f"<option>{CHAT}</option>" in page.text

    bad = jsonl({"input": "hi", "reference": "hello"}, {"reference": "no input <b>here</b>"})
    refused = client.post("/evaluations", files={"file": ("bad<x>.jsonl", bad)},
                          data={"csrf_token": client.csrf, "targets": CHAT, "metrics": "chrf"})
    assert refused.status_code == 400
    assert "line 2: missing its input" in refused.text and "bad&lt;x&gt;.jsonl" in refused.text

    good = jsonl({"input": "Say hello.", "reference": "Hello"}, {"input": "Say goodbye.", "reference": "Goodbye"})
    started = client.post("/evaluations", files={"file": ("greetings.jsonl", good)},
                          data={"csrf_token": client.csrf, "targets": CHAT, "metrics": ["chrf", "exact_match"],
                                "name": "greetings", "max_tokens": "6"})
    assert started.status_code == 303, started.text[:500]
    job_id = started.headers["location"].rsplit("/", 1)[1]
    text = wait_for_job(client, job_id)
    assert 'id="evaluation-status">SUCCESS<' in text and 'id="scores"' in text and "chrf" in text
    assert f'src="/evaluations/{job_id}/chart.svg"' in text
    assert "style=" not in text and not re.search(r"\son[a-z]+=", text)  # the console's CSP holds
    chart = client.get(f"/evaluations/{job_id}/chart.svg")
    assert chart.status_code == 200 and chart.headers["content-type"].startswith("image/svg+xml")
    assert "<svg" in chart.text and "greetings" in chart.text
    table = client.get(f"/evaluations/{job_id}/results.csv")
    assert table.headers["content-disposition"].startswith("attachment")
    assert table.text.splitlines()[0].startswith("item_index,line,target,chrf") and len(table.text.splitlines()) == 3
    assert client.get(f"/evaluations/{job_id}/results.html").status_code == 404
    listed = client.get("/evaluations").text
    assert f'href="/evaluations/{job_id}"' in listed and "greetings" in listed
    # Cancelling a finished job says why not, on its page.
    assert client.post_form(f"/evaluations/{job_id}/cancel").status_code == 303
    assert "already SUCCESS" in client.get(f"/evaluations/{job_id}").text


def test_a_red_team_run_from_the_console(platform: Platform) -> None:
    tenant = platform.create_tenant("console-red-team", ("inference",))
    client = platform.session(tenant.key)
    started = client.post_form("/evaluations/red-team", {"targets": CHAT, "families": "system_prompt_extraction"})
    assert started.status_code == 303, started.text[:500]
    text = wait_for_job(client, started.headers["location"].rsplit("/", 1)[1])
    assert 'id="evaluation-status">SUCCESS<' in text and "system_prompt_extraction" in text
    assert 'class="red-team"' in text
    unserved = client.post_form("/evaluations/red-team", {"targets": CHAT, "judge_model": "not-served"})
    assert unserved.status_code == 404 and "not-served" in unserved.text
