"""Load: N concurrent chats through gradio_client against `rag serve` (a separate process) and
a loopback LLM that takes DELAY seconds per call. Reports completed, failed, p50/p95 latency
and the server's peak memory (VmHWM).

Usage: python bench/load.py [N=32] [DELAY_S=1.0]   (needs the built index)
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradio_client import Client

from tests.fake_llm import FakeLLM

QUESTIONS = [
    "How does L-Mul replace floating point multiplication?",
    "Which optimizer was discovered by symbolic program search?",
    "Which datasets exist for medical image segmentation?",
    "What does SINDy-RL combine?",
]


def server_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    fake = FakeLLM().start()
    fake.delay = delay
    fake.default = "An answer citing its source [1]."
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-load",
        "OPENAI_BASE_URL": fake.base_url,
        "RAG_LLM_MODEL": "m",
        "HF_HUB_OFFLINE": "1",
    }
    launched = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "rag", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1)
            startup = time.perf_counter() - launched
            break
        except OSError:
            time.sleep(0.2)
    Client(url, verbose=False, analytics_enabled=False).predict(QUESTIONS[0], api_name="/chat")

    # One client per user, connected before the clock starts (a client's set-up is not the
    # server's latency, and here it would compete with the server for the same 2 cores).
    with ThreadPoolExecutor(8) as pool:
        clients = list(
            pool.map(lambda _: Client(url, verbose=False, analytics_enabled=False), range(n))
        )

    def one(i: int) -> tuple[bool, float]:
        start = time.perf_counter()
        try:
            reply = clients[i].predict(QUESTIONS[i % len(QUESTIONS)], api_name="/chat")
            ok = "Sources:" in reply or "does not cover" in reply
        except Exception:
            ok = False
        return ok, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    peak_mb = server_peak_mb(server.pid)
    server.terminate()
    server.wait(timeout=30)
    fake.stop()
    print(f"LLM requests at once, at most: {fake.max_in_flight}")
    times = sorted(t for _, t in results)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(f"rag serve on a built index: {startup:.1f} s from start to serving the page")
    print("| chats | LLM delay | completed | failed | p50 | p95 | wall | server peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {n} | {delay:g} s | {sum(ok for ok, _ in results)} | "
        f"{sum(not ok for ok, _ in results)} | {statistics.median(times):.2f} s | {p95:.2f} s | "
        f"{wall:.2f} s | {peak_mb:.0f} MB |"
    )


if __name__ == "__main__":
    main()
