"""The chat page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Run with `pytest -m browser tests/test_web.py`; skipped when Chromium or Playwright is missing.
The screenshot lands in test-artifacts/web_chat.png.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.browser

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from test_server import _free_port, lively_model  # noqa: E402

from sprout.infer.server import ModelRegistry, ServeSettings, create_app  # noqa: E402
from sprout.tokenizer import Tokenizer, default_tokenizer_dir  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def base_url():
    torch.set_num_threads(1)
    tok = Tokenizer.load(default_tokenizer_dir())
    settings = ServeSettings(max_tokens_cap=256)
    registry = ModelRegistry(settings)
    registry.add("tiny", lively_model(0, tok.vocab_size), tok)
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(registry, settings), host="127.0.0.1", port=port, log_level="warning")
    )
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_chat_page_streams_an_answer(base_url, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        # A persistent context is how Playwright takes a fresh --user-data-dir.
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 1100, "height": 700},
        )
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base_url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        assert page.locator("#model").input_value() == "tiny"
        # Language toggle switches the UI to Chinese and back.
        page.click("#lang")
        assert page.locator("#send").inner_text() == "发送"
        page.click("#lang")
        assert page.locator("#send").inner_text() == "Send"
        page.fill("#max-tokens", "120")
        page.fill("#system", "You are a helpful assistant.")
        page.fill("#input", "Hello! Tell me about insurance.")
        page.click("#send")
        page.wait_for_selector(".msg.user")
        assert page.locator(".msg.user").inner_text() == "Hello! Tell me about insurance."
        # Streamed text appears in the assistant bubble, then streaming ends.
        page.wait_for_function(
            "document.querySelector('.msg.assistant .content').textContent.length > 0", timeout=20_000
        )
        page.wait_for_function("!document.querySelector('.msg.assistant.streaming')", timeout=30_000)
        answer = page.locator(".msg.assistant .content").inner_text()
        assert len(answer) > 10
        assert "tokens" in page.locator("#status").inner_text()
        # A second turn keeps the first in the conversation.
        page.fill("#input", "And in Chinese?")
        page.press("#input", "Enter")
        page.wait_for_function(
            "document.querySelectorAll('.msg.assistant').length == 2 && "
            "!document.querySelector('.msg.assistant.streaming')",
            timeout=30_000,
        )
        assert page.locator(".msg.error").count() == 0
        page.screenshot(path=str(ARTIFACTS / "web_chat.png"), full_page=True)
        assert not errors, errors
        browser.close()
    assert (ARTIFACTS / "web_chat.png").stat().st_size > 5000
