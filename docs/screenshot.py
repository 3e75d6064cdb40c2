"""Screenshots of the chat UI for the README: an answer with its citation chips and its own
sources (per-claim evidence) on a desktop and on a phone, and a topic summary.

Usage: python docs/screenshot.py [OUT_DIR]   (needs /usr/bin/chromium and the built index;
uses the configured LLM if there is one, else the extractive mode; writes chat.png,
chat-phone.png and summary.png)
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from rag.settings import Settings
from ui.app import launch

QUESTION = "How does L-Mul replace floating point multiplication, and how accurate is it?"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


TOPIC = "low-precision arithmetic for energy-efficient language models"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = launch(Settings(), port=port, block=False)
    try:
        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            for name, size in (("chat.png", (1440, 900)), ("chat-phone.png", (390, 844))):
                page = browser.new_page(viewport={"width": size[0], "height": size[1]})
                page.goto(f"http://127.0.0.1:{port}")
                box = page.locator("#question textarea")
                box.fill(QUESTION)
                box.press("Enter")
                page.locator("#chat details").first.wait_for(timeout=120_000)
                page.locator("#chat a.cite").first.hover()
                page.screenshot(path=str(out / name), full_page=name == "chat.png")
                page.close()
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_role("tab", name="Summaries").click()
            page.locator("#topic textarea").fill(TOPIC)
            page.locator("#summarize-topic").click()
            page.locator("#summary").get_by_text("References").wait_for(timeout=300_000)
            page.screenshot(path=str(out / "summary.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    print(out)


if __name__ == "__main__":
    main()
