"""Soak: `rag serve` answering without pause while other processes ingest into its index.

Four clients ask the dev questions through `/chat_json` (extractive answers) for the whole run;
at three points another process runs `rag ingest` with five new papers on a topic the corpus
lacks, and a probe asks about them until they are cited. Reports answers, failures, latency,
and for each ingest its duration and how long until the server cited the new papers.

Usage: python bench/soak.py [--minutes 10] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOPICS = ("zebra stripes and biting flies", "coral reef bleaching", "sourdough fermentation")


def new_papers(topic: str, round_: int) -> list[dict[str, str]]:
    return [
        {
            "id": f"soak-{round_}-{i}",
            "title": f"A Field Study of {topic.title()} Number {i}",
            "abstract": f"We study {topic} in field trial {i} of round {round_}, measuring how "
            f"{topic} vary across seasons and sites, and release the observations.",
        }
        for i in range(5)
    ]


def main() -> None:
    from gradio_client import Client

    from tests.helpers import free_port, wait_http

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    questions = [
        json.loads(line)["question"] for line in (ROOT / "tests/data/dev_questions.jsonl").open()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))},
            "RAG_INDEX_DIR": str(Path(tmp) / "index"),
            "HF_HUB_OFFLINE": "1",
        }
        subprocess.run(
            [sys.executable, "-m", "rag", "ingest"], env=env, check=True, capture_output=True
        )
        port = free_port()
        log = (Path(tmp) / "server.log").open("w")  # a pipe nobody reads would block the server
        server = subprocess.Popen(
            [sys.executable, "-m", "rag", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(url, server)
        stop = threading.Event()
        latencies: list[float] = []
        failures: list[str] = []

        def client(offset: int) -> None:
            chat = Client(url, verbose=False, analytics_enabled=False)
            i = offset
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    chat.predict(questions[i % len(questions)], api_name="/chat_json")
                    print(".", end="", flush=True)
                    latencies.append(time.perf_counter() - start)
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}"[:200])
                i += args.clients

        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        for thread in threads:
            thread.start()
        rounds = []
        probe = Client(url, verbose=False, analytics_enabled=False)
        began = time.monotonic()
        total = args.minutes * 60
        for number, topic in enumerate(TOPICS, start=1):
            time.sleep(max(0.0, began + total * number / 4 - time.monotonic()))
            path = Path(tmp) / f"round{number}.jsonl"
            path.write_text("".join(json.dumps(p) + "\n" for p in new_papers(topic, number)))
            start = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "rag", "ingest", str(path)],
                env=env,
                check=True,
                capture_output=True,
            )
            ingested = time.monotonic()
            cited = None
            while time.monotonic() - ingested < 120:
                data = probe.predict(
                    f"What do field studies find about {topic}?", api_name="/chat_json"
                )
                if any(c["paper_id"].startswith(f"soak-{number}-") for c in data["citations"]):
                    cited = time.monotonic() - ingested
                    break
                time.sleep(1)
            rounds.append((topic, ingested - start, cited))
        time.sleep(max(0.0, began + total - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join()
        server.terminate()
        server.wait(timeout=30)
        log.close()
        errors = [line for line in (Path(tmp) / "server.log").open() if "Traceback" in line]
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
    print(
        f"| minutes | clients | answers | failed | p50 | p95 |\n|---|---|---|---|---|---|\n"
        f"| {args.minutes:g} | {args.clients} | {len(latencies)} | {len(failures)} | "
        f"{statistics.median(latencies):.2f} s | {p95:.2f} s |\n"
    )
    print("| ingest | took | new papers cited after |\n|---|---|---|")
    for topic, took, cited in rounds:
        print(f"| {topic} | {took:.1f} s | {'never' if cited is None else f'{cited:.1f} s'} |")
    for failure in failures[:5]:
        print(f"- failure: {failure}")
    print(f"tracebacks in the server log: {len(errors)}")


if __name__ == "__main__":
    main()
