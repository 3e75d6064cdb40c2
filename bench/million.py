"""A million papers on one machine: the real ingest, store and query paths over synthetic
abstracts, with no embedding model (`RAG_EMBED_MODEL=hash:384`: vectors seeded by a hash of
the text; the model is not what is measured).

Abstracts are drawn from a 60,000-word vocabulary with Zipf-distributed word frequencies and
log-normal lengths (median 270 words, sentences of 12 to 30: 1.7 chunks per paper), so BM25 sees
realistic term statistics; each paper has 1 to 3 arXiv categories (Zipf: cs.LG in about a
third, q-fin.ST in 1.4 %) and a date from 2007 to 2025 (a tenth since 2024), in the arXiv
snapshot's fields, for the filters. Each step prints a Markdown table row as it ends (steps can
be run one at a time on the same directory):

* gen: write the JSON Lines file (skipped when it exists);
* ingest: `rag ingest FILE` in a fresh process: wall time, peak RSS; the index's size on disk;
* bm25: build the BM25 index whole in a fresh process (an ingest does it when it ends; this
  times it alone): wall time, peak RSS, segments;
* search: a fresh `rag search --json` process, three times: wall time, peak RSS;
* filtered: the same with a filter (a common category, a date, a rare category);
* warm: dense, bm25 and hybrid searches in one warm process, p50/p95 over 50 queries each;
* serve: `rag serve` until the page answers, its RSS then and after one search;
* incremental: `rag ingest` of 1,000 new papers into it (new ones at each run): wall time, peak
  RSS, what BM25 rebuilt.

With `--server`, a real `chroma run --path DIR/server` is started and every step goes to it
through RAG_CHROMA_HOST (the local index directory then holds only BM25 and the lock).

Usage: python bench/million.py [--papers 1000000] [--dir /tmp/million] [--steps gen,ingest,...]
                               [--server]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = 60_000
SYLLABLES = "ka ri to mu ne sa lo vi de an or el us in ma te po ge ul ix".split()
STEPS = ("gen", "ingest", "bm25", "search", "filtered", "warm", "serve", "incremental")
CATEGORIES = """cs.LG cs.CV cs.CL cs.AI stat.ML cs.RO math.OC cs.IR quant-ph cs.CR eess.IV cs.NE
cs.SD eess.SP cs.HC math.ST physics.comp-ph cs.DC q-bio.NC econ.EM cs.SE cs.DB cs.GT astro-ph.IM
hep-th cond-mat.dis-nn math.PR cs.SY eess.AS q-fin.ST""".split()
FIRST_DAY, DAYS = np.datetime64("2007-04-02"), 6848  # to 2025-12-31
FILTERS = (("--category", "cs.lg"), ("--since", "2024-01-01"), ("--category", "q-fin.ST"))
BUILD_BM25 = (
    "from rag.settings import Settings; from rag.store import Store; "
    "from rag.lexical import LexicalIndex; from rag.embed import get_embedder; "
    "s = Settings(); idx = LexicalIndex(Store(s, get_embedder(s).name)); "
    "idx._build(idx.store.stamp()); print(len(idx.current().segments))"
)


def vocabulary(seed: int = 7) -> np.ndarray:
    """60,000 distinct pseudo-words of 2 to 4 syllables."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        n = int(rng.integers(2, 5))
        words["".join(rng.choice(SYLLABLES, n))] = None
    return np.array(list(words), dtype=object)


def sentences(words: np.ndarray, rng: np.random.Generator) -> str:
    """Words as sentences of 12 to 30 words, each capitalised and ending with a period."""
    out, at = [], 0
    while at < len(words):
        n = int(rng.integers(12, 31))
        out.append(" ".join(words[at : at + n]).capitalize() + ".")
        at += n
    return " ".join(out)


def categories(rng: np.random.Generator, n: int) -> list[list[str]]:
    """1 to 3 distinct arXiv categories for each of `n` papers, the first from a Zipf law over
    `CATEGORIES` (cs.LG the most common: in about a third of the papers)."""
    weights = 1.0 / np.arange(1, len(CATEGORIES) + 1)
    weights /= weights.sum()
    counts = rng.choice([1, 2, 3], n, p=[0.5, 0.35, 0.15])
    drawn = rng.choice(len(CATEGORIES), (n, 3), p=weights)
    return [
        list(dict.fromkeys(CATEGORIES[c] for c in row[:k]))
        for row, k in zip(drawn, counts, strict=True)
    ]


def write_corpus(path: Path, papers: int, first: int = 0, seed: int = 1) -> None:
    """`papers` records in the arXiv snapshot's form (ids from `first`): Zipf words,
    log-normal lengths, categories, a date between 2007 and 2025."""
    words = vocabulary()
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, VOCABULARY + 1)
    p = 1.0 / ranks**1.07
    p /= p.sum()
    block = 10_000
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, papers, block):
            n = min(block, papers - start)
            lengths = np.clip(rng.lognormal(np.log(270), 0.35, n).astype(int), 40, 700)
            title_lengths = rng.integers(6, 13, n)
            drawn = words[rng.choice(VOCABULARY, int(lengths.sum() + title_lengths.sum()), p=p)]
            subjects = categories(rng, n)
            days = FIRST_DAY + rng.integers(0, DAYS, n).astype("timedelta64[D]")
            at = 0
            lines = []
            for i in range(n):
                title = " ".join(drawn[at : at + title_lengths[i]]).capitalize()
                at += title_lengths[i]
                abstract = sentences(drawn[at : at + lengths[i]], rng)
                at += lengths[i]
                record = {
                    "id": f"z{first + start + i:08d}",
                    "title": title,
                    "abstract": abstract,
                    "categories": " ".join(subjects[i]),
                    "update_date": str(days[i]),
                }
                lines.append(json.dumps(record))
            out.write("\n".join(lines) + "\n")


SERVER: dict[str, str] = {}  # RAG_CHROMA_HOST/PORT under --server


def env(index: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    return {**keep, "RAG_INDEX_DIR": str(index), "RAG_EMBED_MODEL": "hash:384", **SERVER}


def start_chroma(path: Path) -> subprocess.Popen:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    chroma = Path(sys.executable).parent / "chroma"
    server = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    SERVER.update({"RAG_CHROMA_HOST": "127.0.0.1", "RAG_CHROMA_PORT": str(port)})
    return server


def timed(cmd: list[str], index: Path) -> tuple[float, float, str]:
    """Run `cmd`: (wall seconds, peak RSS MB of that process, stdout)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(cmd, env=env(index), stdout=out_file, stderr=err_file)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS
        wall = time.perf_counter() - start
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    rss = usage.ru_maxrss / 1024
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-2000:]}")
    return wall, rss, out.decode()


def rag(*args: str) -> list[str]:
    return [sys.executable, "-m", "rag", *args]


def row(name: str, value: str) -> None:
    print(f"| {name} | {value} |", flush=True)


def size_on_disk(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{total / 2**30:.2f} GB"


def warm_child(index: Path) -> None:
    """In its own process: p50/p95 of 50 searches per retriever mode, after one warm-up."""
    sys.path.insert(0, str(ROOT))  # the environment is the one `timed` gave this process
    from rag.api import Assistant
    from rag.settings import Settings

    assistant = Assistant(Settings())
    words = vocabulary()
    rng = np.random.default_rng(3)
    queries = [" ".join(words[rng.integers(50, 20_000, 6)]) for _ in range(51)]
    result = {}
    for mode in ("dense", "bm25", "hybrid"):
        retriever = assistant.retriever(mode=mode)
        start = time.perf_counter()
        retriever.search(queries[0], 10)
        first = time.perf_counter() - start
        times = []
        for query in queries[1:]:
            start = time.perf_counter()
            retriever.search(query, 10)
            times.append(time.perf_counter() - start)
        times.sort()
        result[mode] = (first, statistics.median(times), times[int(0.95 * (len(times) - 1))])
    print(json.dumps(result))


def serve_step(index: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    server = subprocess.Popen(
        rag("serve", "--port", str(port)),
        env=env(index),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("rag serve exited") from None
                time.sleep(0.2)
        up = time.perf_counter() - start
        rss = rss_mb(server.pid)
        from gradio_client import Client

        began = time.perf_counter()
        Client(url, verbose=False).predict("kari tomu nesa", 10, api_name="/search")
        first = time.perf_counter() - began
        row("`rag serve`: start to page served; RSS then", f"{up:.1f} s; {rss:.0f} MB")
        row(
            "`rag serve`: first search (loads BM25 and the dense index); RSS after (VmHWM)",
            f"{first:.1f} s; {rss_mb(server.pid):.0f} MB ({rss_mb(server.pid, 'VmHWM'):.0f} MB)",
        )
    finally:
        server.terminate()
        server.wait(timeout=60)


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/million"))
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--server", action="store_true", help="through a `chroma run` server")
    parser.add_argument("--warm-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_child:
        warm_child(args.warm_child)
        return
    chroma = start_chroma(args.dir / "server") if args.server else None
    try:
        run_steps(args)
    finally:
        if chroma is not None:
            chroma.terminate()
            chroma.wait(timeout=60)


def run_steps(args: argparse.Namespace) -> None:
    steps = args.steps.split(",")
    args.dir.mkdir(parents=True, exist_ok=True)
    corpus, index = args.dir / f"papers-{args.papers}.jsonl", args.dir / "index"
    print("| measure | value |\n|---|---|", flush=True)
    if "gen" in steps and not corpus.exists():
        start = time.perf_counter()
        write_corpus(corpus, args.papers)
        row("write the JSON Lines file", f"{time.perf_counter() - start:.0f} s")
    if "ingest" in steps:
        shutil.rmtree(index, ignore_errors=True)
        wall, rss, out = timed(rag("ingest", str(corpus), "--json"), index)
        report = json.loads(out)
        size = corpus.stat().st_size / 2**30
        row(
            f"`rag ingest` {report['papers_total']:,} papers ({size:.1f} GB JSONL)",
            f"{wall / 60:.1f} min; peak RSS {rss:.0f} MB; {report['chunks_embedded']:,} chunks",
        )
        row("index on disk", size_on_disk(index))
    if "bm25" in steps:
        wall, rss, out = timed([sys.executable, "-c", BUILD_BM25], index)
        row("BM25 built whole", f"{wall:.0f} s; peak RSS {rss:.0f} MB; {out.strip()} segments")
    if "search" in steps:
        for attempt in range(3):
            wall, rss, _ = timed(rag("search", "kari tomu nesa", "--json"), index)
            row(f"fresh `rag search --json` (run {attempt + 1})", f"{wall:.1f} s; {rss:.0f} MB")
    if "filtered" in steps:
        for flag, value in FILTERS:
            wall, rss, out = timed(rag("search", "kari tomu nesa", flag, value, "--json"), index)
            found = len(json.loads(out)["results"])
            row(
                f"fresh `rag search {flag} {value} --json`",
                f"{wall:.1f} s; {rss:.0f} MB; {found} papers",
            )
    if "warm" in steps:
        _, _, out = timed([sys.executable, __file__, "--warm-child", str(index)], index)
        for mode, (first, p50, p95) in json.loads(out.strip().splitlines()[-1]).items():
            row(
                f"warm {mode}: first query; p50 / p95 of 50",
                f"{first:.2f} s; {1000 * p50:.1f} / {1000 * p95:.1f} ms",
            )
    if "serve" in steps:
        serve_step(index)
    if "incremental" in steps:
        runs = len(list(args.dir.glob("papers-1000-more*.jsonl")))  # new papers each run
        extra = args.dir / f"papers-1000-more-{runs}.jsonl"
        write_corpus(extra, 1000, first=args.papers + 1000 * runs, seed=99 + runs)
        wall, rss, out = timed(rag("ingest", str(extra), "--json"), index)
        report = json.loads(out)
        row(
            "`rag ingest` 1,000 new papers into it",
            f"{wall:.1f} s; peak RSS {rss:.0f} MB; {report['papers_added']} added",
        )
        record = index / "bm25"
        for saved in record.glob("*/papers.json"):
            segments = json.loads(saved.read_text()).get("segments", [])
            sizes = ", ".join(f"{len(s['paper_ids']):,}" for s in segments)
            row("BM25 segments after it (papers each)", sizes or "one index (rebuilt whole)")
        wall, rss, _ = timed(rag("search", "kari tomu nesa", "--json"), index)
        row("fresh `rag search --json` after it", f"{wall:.1f} s; {rss:.0f} MB")


if __name__ == "__main__":
    main()
