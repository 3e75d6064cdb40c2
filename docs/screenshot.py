"""Screenshot of the chat UI answering a corpus question (for the README).

Usage: python docs/screenshot.py [OUT.png]   (needs /usr/bin/chromium and the built index;
uses the configured LLM if there is one, else the extractive mode)
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


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("chat.png"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = launch(Settings(), port=port, block=False)
    try:
        with sync_playwright() as play:
            browser = play.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.goto(f"http://127.0.0.1:{port}")
            box = page.locator("#question textarea")
            box.fill(QUESTION)
            box.press("Enter")
            page.locator("#sources").get_by_text("Addition is All You Need").first.wait_for(
                timeout=120_000
            )
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        app.close()
    print(out)


if __name__ == "__main__":
    main()
