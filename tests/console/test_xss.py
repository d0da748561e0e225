"""Hostile strings through every channel the console shows: a chat message and a
model's output, file names, a deployment name and log lines. Each must appear as
text, never become markup, and never run. The test does not lean on the CSP
(which would stop a script even where escaping failed): it fails as soon as a
payload becomes an element."""

from __future__ import annotations

import json

import pytest
from console_helpers import Platform, has_bwrap, no_script_errors, shot, sign_in, wait_until

pytestmark = pytest.mark.slow

IMG = "<img src=x onerror=window.__xss=1>"
SCRIPT = "<script>window.__xss=2</script>"
SVG = '"><svg onload=window.__xss=3>'


def assert_inert(page) -> None:
    """No payload ran, and none became an element."""
    assert page.evaluate("() => window.__xss") is None
    planted = "() => document.querySelectorAll('img[src=x], svg, script:not([src]):not([type])').length"
    assert page.evaluate(planted) == 0


def test_chat_messages_and_model_output_are_text(page, platform: Platform, screenshots):
    tenant = platform.create_tenant("xss-chat", ("inference",))
    sign_in(page, tenant.key)
    page.fill("#pg-system", SCRIPT)
    page.fill("#pg-max-tokens", "64")
    # A JSON schema whose only valid answer carries the payload: the model must write it.
    schema = {"type": "object", "properties": {"html": {"type": "string", "enum": [IMG]}},
              "required": ["html"], "additionalProperties": False}
    page.select_option("#pg-format", "json_schema")
    page.fill("#pg-schema", json.dumps(schema))
    page.fill("#pg-input", f"{IMG} {SVG}")
    page.click("#pg-send")
    wait_until(page, "() => !!document.querySelector('.message.assistant .content') && "
               "!document.querySelector('.message.assistant .content.streaming')", timeout=120)
    assert IMG in page.inner_text(".message.user .content")
    output = page.inner_text(".message.assistant .content")
    assert json.loads(output) == {"html": IMG}
    assert_inert(page)
    page.click("#pg-code")  # the snippets carry the payloads too
    assert SCRIPT in page.inner_text("#pg-code-openai")
    assert_inert(page)
    shot(page, screenshots, "xss-playground")
    no_script_errors(page)


def test_file_names_deployment_names_and_log_lines_are_text(page, platform: Platform, screenshots, tmp_path):
    tenant = platform.create_tenant("xss-objects", ("deploy", "sandbox", "fine-tune", "inference"))
    sign_in(page, tenant.key)

    # A training file named with a payload, refused: its errors name the file.
    hostile = tmp_path / f"{IMG}.jsonl"
    hostile.write_text("{not json\n")
    page.goto("/fine-tuning")
    page.set_input_files("#upload-training input[type=file]", str(hostile))
    page.click("#upload-training button[type=submit]")
    assert f"{IMG}.jsonl: line 1" in page.inner_text("#validation-errors")
    assert_inert(page)

    # A deployment named with a payload: refused, and the form comes back holding it as text.
    page.goto("/deployments")
    form = page.locator("#create-deployment")
    form.locator("input[name=name]").fill(SVG)
    form.locator("input[name=command]").fill(SCRIPT)
    form.locator("button[type=submit]").click()
    assert page.locator("#create-deployment input[name=name]").input_value() == SVG
    assert page.locator(".flash.error").count() == 1
    assert_inert(page)

    # A deployment whose logs print payloads.
    form = page.locator("#create-deployment")
    form.locator("input[name=name]").fill("noisy")
    form.locator("input[name=command]").fill(
        f"printf '%s\\n' '{IMG}' '{SCRIPT}' '{SVG}'; exec python3 -u -m http.server $PORT --bind 127.0.0.1"
    )
    form.locator("input[name=min_replicas]").fill("1")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/deployments/noisy")
    wait_until(page, "() => !!document.getElementById('log-text')?.textContent.includes('window.__xss=2')", timeout=90)
    logs = page.inner_text("#log-text")
    assert IMG in logs and SCRIPT in logs and SVG in logs
    assert_inert(page)
    shot(page, screenshots, "xss-logs")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("form[action='/deployments/noisy/delete'] button")
    page.wait_for_url("**/deployments")

    if has_bwrap:
        # A sandbox file named with a payload, listed, and a command printing one.
        page.goto("/sandboxes")
        page.click("#create-sandbox button[type=submit]")
        page.wait_for_url("**/sandboxes/*")
        upload = tmp_path / "upload"
        upload.mkdir()
        named = upload / f"{IMG}.txt"
        named.write_text("x")
        page.set_input_files("#upload-form input[type=file]", str(named))
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("#files >> text=.txt")
        assert f"{IMG}.txt" in page.inner_text("#files")
        page.fill("#command-form input[name=cmd]", f"printf '%s' '{SCRIPT}'; ls")
        page.click("#command-form button[type=submit]")
        page.wait_for_selector(".command-result pre.stdout", timeout=60_000)
        assert SCRIPT in page.inner_text(".command-result pre.stdout")
        assert_inert(page)
        shot(page, screenshots, "xss-sandbox")
    no_script_errors(page)
