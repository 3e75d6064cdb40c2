"""Chunk texts kept beside an embedded collection (rag/texts.py), not four times in Chroma."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.collection import TEXTS_KEY, Collection
from rag.errors import RagError
from rag.ingest import ingest_papers
from rag.retrieve import get_retriever
from rag.settings import Settings
from rag.store import Store
from rag.texts import ChunkTexts, texts_path
from tests.helpers import HashEmbedder, make_paper, run_rag, write_jsonl

LONG = "Glaciers retreat faster where meltwater lubricates their beds. " * 14


def stored_texts(settings: Settings) -> dict[str, str]:
    beside = ChunkTexts(texts_path(settings.index_dir / "chroma", settings.collection))
    with beside._connection() as db:
        return dict(db.execute("SELECT id, text FROM texts"))


def test_an_embedded_index_keeps_each_text_once_beside_chroma(settings: Settings) -> None:
    """Chroma's SQLite kept each text four times (about 180 KB written per chunk): an
    embedded collection now holds vectors and metadata, its texts one row each beside it,
    kept in step through re-chunks and deletes."""
    embedder = HashEmbedder()
    papers = [make_paper("Glacier Beds", LONG), make_paper("Sea Ice", "Sea ice thins. " * 3)]
    ingest_papers(papers, settings, embedder)
    store = Store(settings, embedder.name)
    raw = store.open().get(include=["documents"])
    assert raw["ids"] and all(doc is None for doc in raw["documents"])  # nothing in Chroma
    assert (store.open().metadata or {}).get(TEXTS_KEY) == "beside"
    kept = stored_texts(settings)
    assert set(kept) == set(raw["ids"]) and len([c for c in kept if "#" in c]) > 2
    assert store.get(["documents"], ids=raw["ids"])["documents"] == [kept[c] for c in raw["ids"]]

    # Searches read them (Chroma's path and the exact table's).
    for limit in (0, 10_000):
        tuned = settings.model_copy(update={"exact_search_max": limit})
        (top,) = get_retriever(tuned, embedder, "hybrid").search("glaciers meltwater beds", 1)
        assert top.title == "Glacier Beds" and "meltwater" in top.text and top.snippet

    # A shorter version of the long paper: its dropped chunks' texts go with them.
    ingest_papers([make_paper("Glacier Beds", "Glaciers slide on meltwater.")], settings, embedder)
    kept = stored_texts(settings)
    glacier = papers[0].paper_id
    assert [t for c, t in kept.items() if c.startswith(glacier)] == ["Glaciers slide on meltwater."]
    assert set(kept) == set(Store(settings, embedder.name).open().get(include=[])["ids"])


def test_an_index_with_its_texts_in_chroma_is_still_read(settings: Settings) -> None:
    """Indexes built before (and a server's collections) keep texts in Chroma: read as ever."""
    embedder = HashEmbedder()
    ingest_papers([make_paper("Sea Ice", "Sea ice thins. " * 3)], settings, embedder)
    old = settings.model_copy(update={"collection": "older"})
    collection = Collection(old, embedder.name)
    meta = dict(Store(settings, embedder.name).open().metadata or {})
    meta.pop(TEXTS_KEY)
    col = collection.client.create_collection("older", embedding_function=None, metadata=meta)
    vector = embedder.embed(["Permafrost thaws."])[0]
    col.upsert(
        ids=["p1#0"],
        embeddings=[vector],
        documents=["Permafrost thaws."],
        metadatas=[{"paper_id": "p1", "chunk": 0, "n_chunks": 1, "title": "Permafrost"}],
    )
    store = Store(old.model_copy(update={"exact_search_max": 0}), embedder.name)
    assert store.texts is None
    assert store.paper_chunks(["p1"])["p1"][0].text == "Permafrost thaws."
    assert store.query(np.asarray(vector), 1)[0].text == "Permafrost thaws."
    assert not texts_path(settings.index_dir / "chroma", "older").exists()


def test_a_missing_texts_file_is_one_line_naming_it(tmp_path: Path) -> None:
    index = tmp_path / "index"
    env = {"RAG_INDEX_DIR": str(index), "RAG_EMBED_MODEL": "hash:64"}
    corpus = write_jsonl(tmp_path / "p.jsonl", [{"title": "Sea Ice", "abstract": "Ice thins."}])
    assert run_rag("ingest", str(corpus), env=env).returncode == 0
    missing = texts_path(index / "chroma", Settings().collection)
    missing.unlink()
    found = run_rag("search", "sea ice", env=env)
    assert found.returncode == 1
    assert found.stderr.strip().splitlines() == [
        f"rag: error: the index at {index} is damaged: {missing.name} (the chunk texts) is "
        f"missing from {index / 'chroma'}; restore it, or move the directory aside and run "
        "`rag ingest` to build a new index"
    ]
    assert "Traceback" not in found.stderr


def test_texts_come_back_in_the_order_asked_across_statements(tmp_path: Path) -> None:
    from rag import texts

    beside = ChunkTexts(tmp_path / "t.sqlite3")
    beside.create()
    ids = [f"p{i}#0" for i in range(texts.IDS_PER_STATEMENT * 2 + 7)]
    beside.put(ids, [f"text {i}" for i in range(len(ids))])
    asked = [*reversed(ids), "nowhere#0"]
    assert beside.get(asked) == [f"text {i}" for i in reversed(range(len(ids)))] + [""]
    beside.delete(ids[:3])
    assert beside.get(ids[:4]) == ["", "", "", "text 3"]
    with pytest.raises(RagError, match=r"gone\.sqlite3 \(the chunk texts\) is missing"):
        ChunkTexts(tmp_path / "gone.sqlite3").check()
