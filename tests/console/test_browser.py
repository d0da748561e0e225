"""The console in a real browser (Debian's Chromium, driven by Playwright): the
journeys a user takes, each leaving a screenshot under tests/console/screenshots/."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from console_helpers import Platform, has_bwrap, no_script_errors, seed_usage, shot, sign_in, wait_until

pytestmark = pytest.mark.slow

# Long enough for the page's 3-second poll to see the run between checkpoints.
LIVE_RUN_STEPS = 20



def test_sign_in_and_chat_streams_token_by_token(page, platform: Platform, screenshots):
    tenant = platform.create_tenant("browser-chat", ("inference",))
    page.goto("/")
    assert page.url.endswith("/signin")
    shot(page, screenshots, "signin")
    sign_in(page, tenant.key)
    assert page.url.endswith("/playground")
    assert page.context.cookies()[0]["httpOnly"] and page.evaluate("document.cookie") == ""
    page.fill("#pg-max-tokens", "24")
    page.fill("#pg-temperature", "0")
    # Count the answer's updates as they happen: a stream shows many, a buffered answer one.
    page.evaluate("""() => {
        window.__updates = 0;
        new MutationObserver(() => { window.__updates += 1; })
            .observe(document.getElementById('pg-transcript'), {subtree: true, characterData: true, childList: true});
    }""")
    page.fill("#pg-input", "Tell me about the sea.")
    page.click("#pg-send")
    wait_until(page, "() => !!document.querySelector('.message.assistant .content') && "
               "!document.querySelector('.message.assistant .content.streaming') && "
               "document.querySelector('[data-stat=energy]').textContent !== '…'", timeout=120)
    answer = page.inner_text(".message.assistant .content")
    assert answer.strip()
    assert page.evaluate("window.__updates") >= 5  # user bubble, empty answer, then token after token
    assert int(page.inner_text("[data-stat=completion_tokens]")) > 1
    assert page.inner_text("[data-stat=ttft]").endswith(" ms")
    assert float(page.inner_text("[data-stat=tps]")) > 0
    assert "Wh" in page.inner_text("[data-stat=energy]") or "not measured" in page.inner_text("[data-stat=energy]")
    page.click("#pg-code")
    code = page.inner_text("#pg-code-openai")
    assert "from openai import OpenAI" in code and "Tell me about the sea." in code and "max_tokens=24" in code
    assert "client.chat.stream(" in page.inner_text("#pg-code-mistral")
    shot(page, screenshots, "playground")
    no_script_errors(page)


def test_an_image_reaches_the_api_and_a_text_only_models_refusal_is_shown(page, platform: Platform, screenshots):
    """The default model reads no images: the playground sends the picked image in
    the chat request, and the API's 400 about it is shown, the conversation intact."""
    import io

    from PIL import Image

    tenant = platform.create_tenant("browser-image", ("inference",))
    sign_in(page, tenant.key)
    picture = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(picture, format="PNG")
    red = {"name": "red.png", "mimeType": "image/png", "buffer": picture.getvalue()}
    page.set_input_files("#pg-image", files=[red])
    requests = []
    page.on("request", lambda r: requests.append(r.post_data or "") if r.url.endswith("/playground/chat") else None)
    page.fill("#pg-input", "What colour is this square?")
    page.click("#pg-send")
    wait_until(page, "() => document.getElementById('pg-error').textContent.includes('text-only model')")
    assert "does not accept images" in page.inner_text("#pg-error")
    sent = json.loads(requests[-1])["messages"][-1]["content"]
    assert sent[1]["type"] == "image_url" and sent[1]["image_url"]["url"].startswith("data:image/png;base64,")
    shot(page, screenshots, "playground-image-refused")
    # Without the image, the same question is answered: the refused turn was not kept.
    page.set_input_files("#pg-image", files=[])
    page.fill("#pg-max-tokens", "4")
    page.fill("#pg-input", "Hello")
    page.click("#pg-send")
    wait_until(page, "() => !document.querySelector('.message.assistant .content.streaming') && "
               "document.getElementById('pg-error').textContent === ''", timeout=120)
    assert "image_url" not in (requests[-1] or "")
    answers = page.locator(".message.assistant .content").all_inner_texts()
    assert answers[-1].strip(), answers
    no_script_errors(page)


def test_models_page(page, platform: Platform, screenshots):
    tenant = platform.create_tenant("browser-models", ("inference",))
    sign_in(page, tenant.key)
    page.goto("/models")
    assert "running" in page.inner_text("table")
    shot(page, screenshots, "models")
    no_script_errors(page)


def test_create_scale_and_follow_a_command_deployment(page, platform: Platform, screenshots):
    tenant = platform.create_tenant("browser-deploy", ("deploy", "inference"))
    sign_in(page, tenant.key)
    page.goto("/deployments")
    form = page.locator("#create-deployment")
    form.locator("input[name=name]").fill("web")
    form.locator("input[name=command]").fill("exec python3 -u -m http.server $PORT --bind 127.0.0.1")
    form.locator("input[name=min_replicas]").fill("1")
    form.locator("input[name=max_replicas]").fill("2")
    form.locator("input[name=path_prefix]").fill("/web")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/deployments/web")
    page.fill("#scale-form input[name=replicas]", "2")
    page.click("#scale-form button[type=submit]")
    page.wait_for_url("**/deployments/web")
    # The status fragment is polled every 2 s: both replicas come up, the logs follow.
    wait_until(page, "() => document.querySelectorAll('#deployment-status .badge.running').length === 2", timeout=90)
    wait_until(page, "() => !!document.getElementById('log-text')?.textContent.includes('Serving HTTP')", timeout=60)
    # Traffic through the router shows on the charts at their next refresh (every 10 s).
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=30) as serve:
        for _ in range(5):
            assert serve.get("/serve/web/").status_code == 200  # http.server's directory listing
    # The log stream (server-sent events) appends the lines the replicas write now: http.server's access log.
    wait_until(page, "() => document.getElementById('log-text').textContent.includes('\"GET / HTTP/1.1\" 200')",
               timeout=30)
    assert page.inner_text("#log-state") == "following"
    wait_until(page, "() => (Chart.getChart(document.getElementById('traffic-chart'))?.data.datasets[0].data ?? [])"
               ".some(rate => rate > 0)", timeout=40)
    wait_until(page, "() => (Chart.getChart(document.getElementById('latency-chart'))?.data.datasets[0].data ?? [])"
               ".some(ms => ms > 0)")
    shot(page, screenshots, "deployment")
    page.goto("/deployments")
    assert "2 running" in page.inner_text("#deployments")
    shot(page, screenshots, "deployments")
    page.goto("/deployments/web")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form[action='/deployments/web/delete'] button")
    page.wait_for_url("**/deployments")
    assert "No deployments yet." in page.inner_text("#deployments")
    no_script_errors(page)


@pytest.mark.skipif(not has_bwrap, reason="tier-1 sandboxes need bubblewrap and root")
def test_run_a_command_and_upload_a_file_in_a_sandbox(page, platform: Platform, screenshots, tmp_path):
    tenant = platform.create_tenant("browser-sandbox", ("sandbox",))
    sign_in(page, tenant.key)
    page.goto("/sandboxes")
    page.click("#create-sandbox button[type=submit]")
    page.wait_for_url("**/sandboxes/*")
    page.fill("#command-form input[name=cmd]", "echo hello from $(whoami) && uname -s")
    page.click("#command-form button[type=submit]")
    page.wait_for_selector(".command-result pre.stdout", timeout=60_000)
    assert "hello from" in page.inner_text(".command-result pre.stdout")
    upload = tmp_path / "notes.txt"
    upload.write_text("uploaded from the console\n")
    page.set_input_files("#upload-form input[type=file]", str(upload))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#files >> text=notes.txt")
    page.fill("#command-form input[name=cmd]", "cat notes.txt")
    page.click("#command-form button[type=submit]")
    wait_until(
        page, "() => !!document.querySelector('.command-result pre.stdout')?.textContent.includes('uploaded from')", 60
    )
    shot(page, screenshots, "sandbox")
    page.goto("/sandboxes")
    shot(page, screenshots, "sandboxes")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#sandboxes form button.danger")
    page.wait_for_selector("#sandboxes >> text=No sandbox is running.")
    no_script_errors(page)


def test_a_bad_training_file_is_refused_and_a_run_is_followed_live(page, platform: Platform, screenshots, tmp_path):
    tenant = platform.create_tenant("browser-finetune", ("fine-tune", "inference"))
    sign_in(page, tenant.key)
    page.goto("/fine-tuning")
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"messages": []}) + "\n")
    page.set_input_files("#upload-training input[type=file]", str(bad))
    page.click("#upload-training button[type=submit]")
    errors = page.inner_text("#validation-errors")
    assert "train.jsonl: line 2: not valid JSON" in errors and "train.jsonl: line 3:" in errors
    assert "line 1:" not in errors
    shot(page, screenshots, "fine-tuning-errors")
    assert "No training file yet." in page.inner_text("#training-files")  # refused whole
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text((json.dumps(good) + "\n") * 4)
    page.set_input_files("#upload-training input[type=file]", str(fixed))
    page.click("#upload-training button[type=submit]")
    page.wait_for_selector("#training-files >> text=fixed.jsonl")
    page.fill("#create-job input[name=training_steps]", str(LIVE_RUN_STEPS))
    page.click("#create-job button[type=submit]")
    page.wait_for_url("**/fine-tuning/jobs/*")
    assert page.inner_text("#job-status") in ("QUEUED", "RUNNING", "VALIDATED", "SUCCESS")
    # The page polls the job until it ends: note what each refresh of it shows.
    page.evaluate("""() => {
        // The points each refresh brought (the chart is redrawn from them once it has settled).
        const points = () => JSON.parse(document.getElementById('loss-chart')?.dataset.chart ?? '{"labels": []}');
        const seen = () => ({status: document.getElementById('job-status').textContent,
                             points: points().labels.length});
        window.__refreshes = [seen()];
        document.body.addEventListener('htmx:afterSettle', () => window.__refreshes.push(seen()));
    }""")
    wait_until(page, "() => document.getElementById('job-status').textContent === 'SUCCESS'", timeout=300)
    wait_until(page, "() => !!Chart.getChart(document.getElementById('loss-chart'))")
    curve = page.evaluate("""() => {
        const chart = Chart.getChart(document.getElementById('loss-chart'));
        return {steps: chart.data.labels, loss: chart.data.datasets[0].data, label: chart.data.datasets[0].label};
    }""")
    # One point per checkpoint (five per job), the curve drawn while the run went on.
    assert curve["steps"] == [4, 8, 12, 16, 20] and curve["label"] == "train loss"
    assert all(isinstance(value, float) and 0 < value < 100 for value in curve["loss"]), curve
    refreshes = page.evaluate("window.__refreshes")
    assert any(r["status"] == "RUNNING" and 0 < r["points"] < 5 for r in refreshes), json.dumps(refreshes)
    points = [r["points"] for r in refreshes]
    assert points == sorted(points), refreshes
    assert page.locator("#job-live a", has_text="Use in the playground").count() == 1
    shot(page, screenshots, "fine-tuning-job")
    no_script_errors(page)


def test_a_classifier_is_trained_from_the_console(page, platform: Platform, screenshots, tmp_path):
    """Labelled texts are checked as such, a classifier job over the embedding model
    runs to its loss curve, and the model it made classifies through the API."""
    tenant = platform.create_tenant("browser-classifier", ("fine-tune", "inference"))
    sign_in(page, tenant.key)
    page.goto("/fine-tuning")
    page.select_option("#upload-training select[name=kind]", "classifier")
    bad = tmp_path / "tickets-draft.jsonl"
    bad.write_text(json.dumps({"text": "Refund my last invoice", "labels": {"department": "billing"}}) + "\n"
                   + json.dumps({"text": "The app crashes"}) + "\n")
    page.set_input_files("#upload-training input[type=file]", str(bad))
    page.click("#upload-training button[type=submit]")
    assert "tickets-draft.jsonl: line 2: 'labels' must be" in page.inner_text("#validation-errors")
    billing = ["Refund my last invoice", "I was charged twice this month", "Send me a copy of the bill",
               "Why is my invoice higher than usual", "Cancel my subscription payment", "Update my credit card"]
    technical = ["The app crashes on start", "I cannot log in since the update", "The page shows an error 500",
                 "Sync stopped working on my phone", "The export button does nothing", "Video playback freezes"]
    good = tmp_path / "tickets.jsonl"
    good.write_text("".join(json.dumps({"text": text, "labels": {"department": label}}) + "\n"
                            for texts, label in ((billing, "billing"), (technical, "technical")) for text in texts))
    page.select_option("#upload-training select[name=kind]", "classifier")
    page.set_input_files("#upload-training input[type=file]", str(good))
    page.click("#upload-training button[type=submit]")
    page.wait_for_selector("#training-files >> text=tickets.jsonl")
    page.select_option("#create-job select[name=job_type]", "classifier")
    page.select_option("#create-job select[name=model]", "all-minilm-l6-v2")
    page.fill("#create-job input[name=training_steps]", "40")
    page.fill("#create-job input[name=suffix]", "tickets")
    page.click("#create-job button[type=submit]")
    page.wait_for_url("**/fine-tuning/jobs/*")
    wait_until(page, "() => document.getElementById('job-status').textContent === 'SUCCESS'", timeout=120)
    wait_until(page, "() => (Chart.getChart(document.getElementById('loss-chart'))?.data.labels.length ?? 0) >= 2")
    losses = page.evaluate("Chart.getChart(document.getElementById('loss-chart')).data.datasets[0].data")
    assert losses[-1] < losses[0], losses  # the head learned
    live = page.inner_text("#job-live")
    assert "Classifier" in live and "/v1/classifications" in live
    assert page.locator("#job-live a", has_text="Use in the playground").count() == 0
    # The finished job takes no cancel any more, and its events read as UTC times.
    assert page.locator("#job-live button", has_text="Cancel").count() == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.locator("#job-live tbody td").first.inner_text())
    shot(page, screenshots, "fine-tuning-classifier")
    model = page.locator("#job-live code", has_text="ft:").first.inner_text()
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=60) as api:
        response = api.post("/v1/classifications", json={"model": model, "input": ["I was billed twice, refund me"]})
    scores = response.raise_for_status().json()["results"][0]["department"]["scores"]
    assert max(scores, key=scores.get) == "billing", scores
    no_script_errors(page)


def test_usage_charts_table_and_csv(page, platform: Platform, screenshots):
    tenant = platform.create_tenant("browser-usage", ("inference",))
    seed_usage(platform, tenant, records=60, days=10)
    sign_in(page, tenant.key)
    page.goto("/usage")
    wait_until(page, "() => document.querySelectorAll('canvas[data-drawn=true]').length === 3")
    assert page.inner_text("#total-requests") == "60"
    assert page.locator("#usage-table tbody tr").count() >= 10
    with page.expect_download() as download:
        page.click("text=Export CSV")
    lines = open(download.value.path()).read().splitlines()
    assert lines[0].startswith("day,model,key,requests") and len(lines) >= 11
    shot(page, screenshots, "usage")
    no_script_errors(page)


def test_agents_and_libraries(page, platform: Platform, screenshots, tmp_path):
    tenant = platform.create_tenant("browser-agents", ("inference",))
    sign_in(page, tenant.key)
    page.goto("/agents")
    page.fill("#create-agent input[name=name]", "helper")
    page.click("#create-agent button[type=submit]")
    page.wait_for_selector("#agents >> text=helper")
    page.fill("#create-library input[name=name]", "handbook")
    page.click("#create-library button[type=submit]")
    page.wait_for_url("**/libraries/*")
    document = tmp_path / "handbook.md"
    document.write_text("# Handbook\nThe office opens at nine.\n")
    page.set_input_files("#upload-document input[type=file]", str(document))
    page.click("#upload-document button[type=submit]")
    page.wait_for_selector("#documents >> text=handbook.md")
    page.goto("/agents")
    shot(page, screenshots, "agents")
    no_script_errors(page)


def test_admin_creates_a_key_shown_once_and_revoking_it_signs_its_user_out(browser, page, platform, screenshots):
    sign_in(page, platform.admin_key)
    page.goto("/admin")
    page.fill("#create-workspace input[name=name]", "browser-admin")
    page.click("#create-workspace button[type=submit]")
    page.wait_for_url("**/admin/workspaces/*")
    page.fill("#create-key input[name=name]", "teammate")
    page.click("#create-key button[type=submit]")
    secret = page.inner_text("#created-key-secret").strip()
    assert secret.startswith("tmt_")
    shot(page, screenshots, "admin-workspace")
    page.reload()  # shown once: a reload does not show it again
    assert page.locator("#created-key").count() == 0 and secret not in page.content()

    # The teammate signs in elsewhere; the admin revokes the key; their next click signs them out.
    teammate = browser.new_context(base_url=platform.url)
    other = teammate.new_page()
    sign_in(other, secret)
    assert other.url.endswith("/playground")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#keys form[action$='/revoke'] button")
    page.wait_for_selector("#keys .badge.revoked")
    other.click("header nav >> text=Models")
    other.wait_for_url("**/signin?ended=revoked")
    assert "revoked" in other.inner_text(".flash")
    teammate.close()
    page.goto("/admin/audit?action=key.revoke")
    assert "key.revoke" in page.inner_text("#audit")
    shot(page, screenshots, "admin-audit")
    page.goto("/admin")
    shot(page, screenshots, "admin")
    no_script_errors(page)
