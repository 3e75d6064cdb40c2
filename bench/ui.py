"""The chat in a browser: how soon the page is usable, the first token shows and the whole
answer (with its sources) is there, with a loopback LLM that streams at a set pace.

`rag serve` runs from REPO (default: this checkout; give a `git worktree` of an older commit to
compare before and after) over RAG_INDEX_DIR (default: REPO/index/store), in headless Chromium at
desktop size. Each run opens a fresh page and asks one question.

Usage: python bench/ui.py [--repo DIR] [--runs 6] [--token-delay 0.03]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_llm import FakeLLM  # noqa: E402 - after the path is set

QUESTION = "How does L-Mul replace floating point multiplication?"
LMUL = "Addition is All You Need for Energy-efficient Language Models"
# About 30 words streamed one word at a time, citing the L-Mul paper wherever it is numbered.
WORDS = (
    "L-Mul approximates floating point multiplication with integer additions, which costs "
    "less energy than 8-bit floating point multiplication while keeping higher precision "
    "on the tasks the authors evaluate"
).split()


def reply(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    if "Suggest three short follow-up questions" in prompt:
        return "How accurate is L-Mul on transformer inference?"
    marker = f"\nTitle: {LMUL}\n"
    n = prompt[: prompt.find(marker)].rsplit('<source n="', 1)[-1].split('"')[0]
    return " ".join(WORDS) + f" [{n if n.isdigit() else 1}]."


def serve(repo: Path, llm: FakeLLM, index_dir: str) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))},
        "RAG_INDEX_DIR": index_dir,
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": llm.base_url,
        "RAG_LLM_MODEL": "bench",
        "PYTHONPATH": str(repo),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "rag", "serve", "--port", str(port)],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            return server, url
        except OSError:
            time.sleep(0.2)
    raise SystemExit("rag serve did not start")


def one_run(browser: object, url: str) -> tuple[float, float, float]:
    """(page usable, first token, whole answer) in seconds."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})  # type: ignore[attr-defined]
    start = time.perf_counter()
    page.goto(url)
    box = page.locator("#question textarea")
    box.wait_for(state="visible")
    usable = time.perf_counter() - start
    box.fill(QUESTION)
    asked = time.perf_counter()
    box.press("Enter")
    page.locator("#chat").get_by_text("L-Mul approximates", exact=False).first.wait_for(
        timeout=120_000
    )
    first = time.perf_counter() - asked
    page.locator("#sources").get_by_text(LMUL).first.wait_for(timeout=120_000)
    whole = time.perf_counter() - asked
    page.close()
    return usable, first, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--token-delay", type=float, default=0.03)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    llm = FakeLLM().start()
    llm.default = reply
    llm.chunk_delay = args.token_delay
    llm.chunk_size = 6  # about a token per delta
    index_dir = os.environ.get("RAG_INDEX_DIR", str(args.repo / "index" / "store"))
    server, url = serve(args.repo.resolve(), llm, index_dir)
    try:
        with sync_playwright() as play:
            browser = play.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"]
            )
            one_run(browser, url)  # warm: the first query loads the model and indexes
            runs = [one_run(browser, url) for _ in range(args.runs)]
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        llm.stop()
    commit = subprocess.run(
        ["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    medians = [statistics.median(column) for column in zip(*runs, strict=True)]
    print("| commit | runs | page usable | first token | whole answer with sources |")
    print("|---|---|---|---|---|")
    print(
        f"| {commit} | {args.runs} | {medians[0]:.2f} s | {medians[1]:.2f} s | {medians[2]:.2f} s |"
    )


if __name__ == "__main__":
    main()
