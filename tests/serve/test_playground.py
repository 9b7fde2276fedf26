"""The playground page (`llmsys/serve/web/index.html`) in headless Chromium, against the
real server of conftest.py: the model list, a streamed reply (seen to grow over several
updates, ending equal to the official `openai` client's greedy answer), token usage (equal
to the reference tokenizer's count), JSON-schema mode (checked with jsonschema), tool calls,
bad input, and an API key. Nothing is fetched from anywhere but the server.

Needs Chromium (Debian: `apt-get install -y chromium`) and the `playwright` package; the
tests skip without them.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from llmsys.serve import BackgroundServer, ServerConfig

sync_api = pytest.importorskip("playwright.sync_api")
jsonschema = pytest.importorskip("jsonschema")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TIMEOUT_MS = 60_000
USAGE = re.compile(r"Tokens: (\d+) prompt \+ (\d+) completion = (\d+)")
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
          "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
           "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed "
                                "(apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_page(browser) -> Iterator:
    """`open_page(url)` -> (a fresh page at `url`, the URLs of other hosts it tried to
    fetch: blocked). Pages close at the end of the test."""
    pages = []

    def open_at(url: str):
        page = browser.new_page()
        pages.append(page)
        page.set_default_timeout(TIMEOUT_MS)
        host = urlparse(url).netloc
        outside: list[str] = []

        def only_the_server(route) -> None:
            if urlparse(route.request.url).netloc == host:
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_server)
        page.goto(url + "/")
        return page, outside

    yield open_at
    for page in pages:
        page.close()


def wait_for_model(page, name: str) -> None:
    page.wait_for_function("name => document.getElementById('model').value === name", arg=name)


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_for_reply(page) -> str:
    """Wait until the reply finished (Send enabled again); return its text."""
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length > 0 && "
                           "!document.getElementById('send').disabled")
    return page.locator(".msg.assistant .content").last.text_content()


def test_chat_streams_the_reply_and_shows_usage(server, client, hf_tokenizer, open_page):
    page, outside = open_page(server.url)
    wait_for_model(page, "tiny-llama")
    page.fill("#system", "Answer briefly.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const replies = document.querySelectorAll('.msg.assistant .content');
            if (replies.length) window.seen.push(replies[replies.length - 1].textContent);
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    send(page, "Tell me about the sea.")
    text = wait_for_reply(page)
    page.wait_for_function("() => document.getElementById('usage').textContent !== ''")

    updates = [t for t in dict.fromkeys(page.evaluate("window.seen")) if t]
    assert len(updates) > 1, updates  # the text grew in several steps, as it streamed
    assert all(text.startswith(u) for u in updates) and updates[-1] == text

    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Tell me about the sea."}]
    reference = client.chat.completions.create(model="tiny-llama", messages=messages,
                                               temperature=0, max_tokens=24)
    assert text == reference.choices[0].message.content
    prompt, completion, total = map(int, USAGE.search(page.text_content("#usage")).groups())
    assert prompt == len(hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                          tokenize=True, return_dict=False))
    assert completion == reference.usage.completion_tokens and total == prompt + completion
    assert f"finish reason: {reference.choices[0].finish_reason}" in page.text_content("#usage")
    assert outside == []


def test_json_schema_mode_tool_calls_and_bad_input(server, open_page):
    page, outside = open_page(server.url)
    wait_for_model(page, "tiny-llama")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "48")

    page.check("#json-mode")
    page.fill("#schema", "{not json")
    send(page, "Is the sea wet?")
    assert "The JSON schema is not valid JSON" in page.text_content("#status")
    assert page.locator(".msg").count() == 0  # nothing was sent

    page.fill("#schema", json.dumps(SCHEMA))
    send(page, "Is the sea wet?")
    jsonschema.validate(json.loads(wait_for_reply(page)), SCHEMA)

    page.uncheck("#json-mode")
    page.click("#clear")
    page.fill("#tools", json.dumps(TOOLS))
    page.select_option("#tool-choice", "required")
    send(page, "What is the weather in Paris?")
    wait_for_reply(page)
    call = page.locator(".msg.assistant .tool-call").last.text_content()
    name, arguments = re.fullmatch(r"tool call: (\w+)\((.*)\)", call, re.S).groups()
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER)

    page.fill("#max-tokens", "0")
    send(page, "Hello")
    assert "Max tokens must be a whole number >= 1" in page.text_content("#status")
    assert outside == []


def test_api_key_field(checkpoint, open_page):
    config = ServerConfig(model=str(checkpoint), port=0, served_model_name="keyed",
                          api_keys=["sesame"], graceful_shutdown_s=5)
    with BackgroundServer(config) as keyed:
        page, outside = open_page(keyed.url)
        page.wait_for_function("() => document.getElementById('status').textContent !== ''")
        assert "cannot list models: HTTP 401" in page.text_content("#status")
        page.fill("#api-key", "sesame")
        page.dispatch_event("#api-key", "change")
        wait_for_model(page, "keyed")
        page.fill("#max-tokens", "4")
        send(page, "Hi")
        assert wait_for_reply(page) != ""
        assert "error" not in page.locator(".msg.assistant").last.get_attribute("class")
        page.wait_for_function("() => document.getElementById('usage').textContent !== ''")
        assert USAGE.search(page.text_content("#usage")).group(2) == "4"
        assert outside == []
