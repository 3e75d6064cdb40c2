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


def chroma_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The reads of any Chroma collection from now on, by method name (each one would load an
    embedded collection's whole HNSW index)."""
    from chromadb.api.models.Collection import Collection as ChromaCollection

    calls: list[str] = []
    for name in ("get", "query", "count", "peek"):
        original = getattr(ChromaCollection, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ChromaCollection, name, spy)
    return calls


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
    assert beside.get(asked) == [f"text {i}" for i in reversed(range(len(ids)))] + [None]
    beside.delete(ids[:3])
    assert beside.get(ids[:4]) == [None, None, None, "text 3"]
    beside.restore(ids[:2], [("back", '{"chunk": 0}'), None])
    assert beside.get(ids[:2]) == ["back", None]
    assert beside.rows(ids[:3]) == [("back", '{"chunk": 0}'), None, None]
    assert beside.papers(["p0", "p1", "p4"]) == {
        "p0": [("p0#0", "back", {"chunk": 0})],
        "p4": [("p4#0", "text 4", None)],
    }
    with pytest.raises(RagError, match=r"gone\.sqlite3 \(the chunk texts\) is missing"):
        ChunkTexts(tmp_path / "gone.sqlite3").check()


def test_a_failed_chroma_write_puts_the_texts_back_and_a_vanished_text_hides_its_chunk(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts are written before Chroma's records: when Chroma's write fails (a full disk), the
    texts it replaced are put back, so the failed write changes nothing; a chunk whose text
    an ingest deleted while a search read it is left out, not shown empty."""
    from chromadb.api.models.Collection import Collection as ChromaCollection

    embedder = HashEmbedder()
    ingest_papers([make_paper("Glacier Beds", LONG)], settings, embedder)
    before = stored_texts(settings)

    def full(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ChromaCollection, "upsert", full)
    with pytest.raises(RagError, match="disk is full"):
        ingest_papers([make_paper("Glacier Beds", "Glaciers slide. " * 30)], settings, embedder)
    assert stored_texts(settings) == before
    monkeypatch.undo()

    store = Store(settings.model_copy(update={"exact_search_max": 0}), embedder.name)
    pid = make_paper("Glacier Beds", LONG).paper_id
    gone = f"{pid}#1"
    ChunkTexts(texts_path(settings.index_dir / "chroma", settings.collection)).delete([gone])
    chunks = store.paper_chunks([pid])[pid]
    assert gone not in [c.chunk_id for c in chunks] and all(c.text for c in chunks)
    vector = embedder.embed([before[gone]])[0]
    assert gone not in [h.chunk_id for h in store.query(vector, 5)]


def test_a_server_cannot_serve_an_index_built_embedded(tmp_path: Path) -> None:
    """`chroma run --path INDEX/chroma` over an embedded index: its texts are in a file the
    server's clients do not have; one line says so instead of "damaged" or empty texts."""
    from tests.test_server import CHROMA, free_port, start_server

    if not CHROMA.exists():
        pytest.skip("the chroma command is not installed")
    index = tmp_path / "index"
    env = {"RAG_INDEX_DIR": str(index), "RAG_EMBED_MODEL": "hash:64"}
    corpus = write_jsonl(tmp_path / "p.jsonl", [{"title": "Sea Ice", "abstract": "Ice thins."}])
    assert run_rag("ingest", str(corpus), env=env).returncode == 0
    port = free_port()
    server = start_server(index / "chroma", port)
    try:
        remote = {**env, "RAG_INDEX_DIR": str(tmp_path / "elsewhere")}
        remote |= {"RAG_CHROMA_HOST": "127.0.0.1", "RAG_CHROMA_PORT": str(port)}
        found = run_rag("search", "sea ice", env=remote)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert found.returncode == 1 and "Traceback" not in found.stderr
    (line,) = found.stderr.strip().splitlines()
    assert "was built as an embedded index, whose chunk texts live in a file beside it" in line


def test_a_lock_held_too_long_is_a_busy_index_not_a_damaged_one(tmp_path: Path) -> None:
    import sqlite3

    from rag.chroma import failure

    message = str(failure(sqlite3.OperationalError("database is locked"), tmp_path))
    assert message.startswith(f"the index at {tmp_path} is busy") and "damaged" not in message


def test_chunk_metadata_is_copied_beside_so_a_large_search_never_opens_chromas_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any read of an embedded Chroma collection first loads its whole HNSW index (3.4 s and
    3.3 GB at 1.7M chunks): a search above the exact table ranks from the BM25 segments and
    reads the papers it returns, text and metadata, from the texts file, with not one call
    into Chroma's collection; metadata an ingest changes without the text is copied too."""
    settings = Settings(index_dir=tmp_path / "index", exact_search_max=0)
    embedder = HashEmbedder()
    papers = [
        make_paper(f"Paper {i}", f"Glacier {i} radar survey of ice flow and melt.", "a.txt")
        for i in range(40)
    ]
    ingest_papers(papers, settings, embedder)
    relisted = make_paper("Paper 3", papers[3].abstract, "b.txt")  # seen on another page
    assert ingest_papers([relisted], settings, embedder).papers_updated == 1
    exact = settings.model_copy(update={"exact_search_max": 100_000})
    wanted = get_retriever(exact, embedder).search("glacier 3 radar", 5)

    calls = chroma_reads(monkeypatch)
    got = get_retriever(settings, embedder).search("glacier 3 radar", 5)
    assert calls == []
    assert [(p.paper_id, p.text, p.sources, p.dates) for p in got] == [
        (p.paper_id, p.text, p.sources, p.dates) for p in wanted
    ]
    assert got[0].paper_id == papers[3].paper_id and got[0].sources == ["a.txt", "b.txt"]


def test_an_index_written_before_metadata_was_kept_reads_chroma_until_a_whole_build(
    tmp_path: Path,
) -> None:
    import sqlite3

    from rag.lexical import LexicalIndex

    settings = Settings(index_dir=tmp_path / "index", exact_search_max=0)
    embedder = HashEmbedder()
    papers = [make_paper(f"Paper {i}", f"Coral reef {i} bleaching survey.") for i in range(30)]
    ingest_papers(papers, settings, embedder)
    path = next((settings.index_dir / "chroma").glob("rag-texts-*.sqlite3"))
    with sqlite3.connect(path) as db:  # as written by the version before
        db.execute("ALTER TABLE texts DROP COLUMN meta")
    before = [p.paper_id for p in get_retriever(settings, embedder).search("coral reef 7", 3)]
    assert before[0] == papers[7].paper_id  # from Chroma's metadata
    store = Store(settings, embedder.name)
    assert store.texts is not None and store.texts.lacks_metadata()
    LexicalIndex(store)._build(store.stamp())  # fills the copies in
    assert not store.texts.lacks_metadata()
    again = get_retriever(settings, embedder).search("coral reef 7", 3)
    assert [p.paper_id for p in again] == before and again[0].title == "Paper 7"


def test_filtered_searches_of_a_large_index_read_the_facets_beside_not_chroma(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter above the exact table was answered by Chroma's metadata: its whole HNSW
    index loaded first (3.4 s and 3.3 GB at 1.7M chunks), then every matching chunk read.
    The facets kept beside the texts answer it by the rules of `Filter.matches` (categories
    in any case, dates, sources; a paper relisted elsewhere kept up to date),
    with not one call into Chroma's collection, for every retriever mode."""
    from dataclasses import replace

    from rag.api import search
    from rag.errors import InputError
    from rag.filters import Filter

    settings = Settings(index_dir=tmp_path / "index", exact_search_max=0)
    embedder = HashEmbedder()
    subjects = [("cs.LG",), ("cs.CL", "stat.ML"), ("q-bio.NC",), ()]
    papers = [
        replace(
            make_paper(
                f"Paper {i}", f"Glacier {i} radar survey of ice flow and melt.", f"{i % 3}.txt"
            ),
            categories=subjects[i % 4],
            date=f"202{i % 5}-0{1 + i % 9}-1{i % 10}" if i % 7 else None,
        )
        for i in range(48)
    ]
    ingest_papers(papers, settings, embedder)
    relisted = replace(make_paper("Paper 4", papers[4].abstract, "new.txt"), categories=("cs.LG",))
    assert ingest_papers([relisted], settings, embedder).papers_updated == 1
    exact = settings.model_copy(update={"exact_search_max": 100_000})
    filters = [
        Filter.from_text(categories="CS.lg"),
        Filter.from_text(categories="stat.ml q-bio.NC", since="2022-01-01"),
        Filter.from_text(since="2023-06-01"),
        Filter.from_text(sources=["new.txt", "2.txt"]),
        Filter.from_text(categories="cs.cl", sources=["1.txt"]),
    ]
    modes = ("dense", "bm25", "hybrid")

    def found(config: Settings, f: Filter, mode: str) -> dict[str, float]:
        # All the papers a filter admits (their scores tie often: compared as a whole)
        config = config.model_copy(update={"retriever": mode})
        got = search("glacier radar survey", config, 60, filters=f, embedder=embedder)
        return {p.paper_id: round(p.score, 4) for p in got}

    wanted = {(f, mode): found(exact, f, mode) for f in filters for mode in modes}
    assert all(wanted.values())

    calls = chroma_reads(monkeypatch)
    for (f, mode), scores in wanted.items():
        assert found(settings, f, mode) == scores, (f, mode)
    nothing = Filter.from_text(categories="astro-ph.GA")
    with pytest.raises(InputError, match=r"astro-ph\.GA"):
        search("glacier", settings, 5, filters=nothing, embedder=embedder)
    assert calls == []
    assert relisted.paper_id in Store(settings, embedder.name).admitted_papers(filters[3])


def test_facets_are_trusted_only_once_every_paper_has_them(tmp_path: Path) -> None:
    """An index written before the facets were kept has them for no paper: its filters read
    Chroma until a whole build fills them in; a row written without metadata makes the file
    untrusted again, and a failed Chroma write puts the facets back with the texts."""
    import sqlite3

    from rag.filters import Filter
    from rag.lexical import LexicalIndex

    settings = Settings(index_dir=tmp_path / "index", exact_search_max=0)
    embedder = HashEmbedder()
    papers = [
        make_paper(f"Paper {i}", f"Coral reef {i} bleaching.", f"{i % 2}.txt") for i in range(20)
    ]
    ingest_papers(papers, settings, embedder)
    store = Store(settings, embedder.name)
    texts = store.texts
    assert texts is not None and texts.facets_complete()
    odd = {p.paper_id for p in papers[1::2]}
    assert texts.admitted(Filter(sources=("1.txt",))) == odd
    texts.close()
    with sqlite3.connect(texts.path) as db:  # as written by the version before
        db.execute("DROP TABLE facets")
        db.execute("PRAGMA user_version = 0")
    store = Store(settings, embedder.name)
    texts = store.texts
    assert texts is not None and not texts.facets_complete()
    assert texts.admitted(Filter(sources=("1.txt",))) is None
    assert store.admitted_papers(Filter(sources=("1.txt",))) == odd  # from Chroma
    LexicalIndex(store)._build(store.stamp())
    assert texts.facets_complete() and texts.admitted(Filter(sources=("1.txt",))) == odd

    first = f"{papers[1].paper_id}#0"
    before = texts.rows([first])
    texts.put([first], ["text"], [{"paper_id": papers[1].paper_id, "chunk": 0, "sources": ["x"]}])
    assert texts.admitted(Filter(sources=("x",))) == {papers[1].paper_id}
    texts.restore([first], before)
    assert texts.admitted(Filter(sources=("x",))) == set()
    assert texts.admitted(Filter(sources=("1.txt",))) == odd
    texts.delete([first, f"{papers[3].paper_id}#1"])  # a paper gone; another's second chunk
    assert texts.admitted(Filter(sources=("1.txt",))) == odd - {papers[1].paper_id}
    texts.put([first], ["text"])  # no metadata: this paper's facets are unknown
    assert not texts.facets_complete() and texts.admitted(Filter()) is None


def test_without_facets_a_filter_reads_only_ids_from_chroma_in_large_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no facets answer (a Chroma server, an older index), the papers a filter admits
    are read from Chroma as first-chunk ids only, not metadata, in pages far larger than a
    metadata read's: Chroma pages by offset, so a server took 5 minutes to list a million
    papers in pages of 10,000 with their metadata, 7 s in one page of ids."""
    import sqlite3

    from chromadb.api.models.Collection import Collection as ChromaCollection

    import rag.collection
    from rag.filters import Filter

    settings = Settings(index_dir=tmp_path / "index", exact_search_max=0)
    embedder = HashEmbedder()
    papers = [
        make_paper(f"Paper {i}", f"Coral reef {i} bleaching.", f"{i % 2}.txt") for i in range(30)
    ]
    ingest_papers(papers, settings, embedder)
    path = next((settings.index_dir / "chroma").glob("rag-texts-*.sqlite3"))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 0")  # facets not trusted: Chroma answers
    monkeypatch.setattr(rag.collection, "IDS_PAGE", 4, raising=False)
    reads: list[tuple[list[str], int | None]] = []
    original = ChromaCollection.get

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append((list(kwargs.get("include") or []), kwargs.get("limit")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChromaCollection, "get", spy)
    found = Store(settings, embedder.name).admitted_papers(Filter(sources=("1.txt",)))
    assert found == {p.paper_id for p in papers[1::2]}
    assert reads == [([], 4)] * 5  # 15 ids in pages of 4, and the empty page that ends it
