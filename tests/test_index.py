from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rag.corpus import Listing, Paper, iter_file, merge_papers, sentence_spans
from rag.errors import IndexMismatchError, RagError
from rag.ingest import Chunker, ingest_lock, ingest_papers
from rag.settings import Settings
from rag.store import Store
from tests.helpers import HashEmbedder, make_paper

SENTENCE = "Sparse mixtures of experts route each token to a few expert networks. "


def papers() -> list[Paper]:
    return [
        make_paper("Routing Experts", SENTENCE * 12, "a.txt", "May 8"),  # several chunks
        make_paper(
            "Pointer Networks", "Attention selects input positions as outputs. " * 3, "a.txt"
        ),
        make_paper(
            "Lion Optimizer", "A sign-based optimizer found by program search. " * 3, "b.txt"
        ),
    ]


def snapshot(store: Store) -> dict[str, tuple[str, str]]:
    got = store.get(["documents", "metadatas"])
    return {
        cid: (doc, meta["content_hash"])
        for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
    }


def test_second_ingest_embeds_nothing_and_keeps_the_same_chunks(settings: Settings) -> None:
    embedder = HashEmbedder()
    first = ingest_papers(papers(), settings, embedder)
    store = Store(settings, embedder.name)
    before = snapshot(store)
    assert first.papers_added == 3 and first.chunks_embedded == len(before) > 3

    embedder.texts_embedded = 0
    second = ingest_papers(papers(), settings, embedder)
    assert (second.chunks_embedded, second.papers_added, second.papers_updated) == (0, 0, 0)
    assert second.papers_unchanged == 3
    assert embedder.texts_embedded == 0
    assert snapshot(store) == before


def test_changed_abstract_replaces_only_that_papers_chunks(settings: Settings) -> None:
    embedder = HashEmbedder()
    ingest_papers(papers(), settings, embedder)
    store = Store(settings, embedder.name)
    before = snapshot(store)
    changed = papers()
    changed[0] = make_paper("Routing Experts", "A much shorter abstract now.", "a.txt", "May 8")

    report = ingest_papers(changed, settings, embedder)
    after = snapshot(store)
    pid = changed[0].paper_id
    assert report.papers_updated == 1 and report.chunks_embedded == 1
    assert report.chunks_deleted == sum(1 for c in before if c.startswith(pid)) - 1
    assert {c: v for c, v in after.items() if not c.startswith(pid)} == {
        c: v for c, v in before.items() if not c.startswith(pid)
    }
    assert [doc for c, (doc, _) in after.items() if c.startswith(pid)] == [
        "A much shorter abstract now."
    ]


def test_new_listing_is_recorded_without_embedding(settings: Settings) -> None:
    embedder = HashEmbedder()
    ingest_papers(papers(), settings, embedder)
    embedder.texts_embedded = 0
    relisted = make_paper("Pointer Networks", papers()[1].abstract, "c.txt", "Jul 30")
    report = ingest_papers([relisted], settings, embedder)
    assert report.papers_updated == 1 and embedder.texts_embedded == 0
    meta = Store(settings, embedder.name).chunk_states([relisted.paper_id])[relisted.paper_id][0]
    assert meta["sources"] == ["a.txt", "c.txt"] and meta["dates"] == ["Jul 30"]


def test_half_written_paper_is_redone(settings: Settings) -> None:
    embedder = HashEmbedder()
    ingest_papers(papers(), settings, embedder)
    store = Store(settings, embedder.name)
    before = snapshot(store)
    pid = papers()[0].paper_id
    store.delete([f"{pid}#1"])  # as if killed between writes
    report = ingest_papers(papers(), settings, embedder)
    assert report.papers_updated == 1
    assert snapshot(store) == before


def test_paper_repeated_across_batches_counts_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rag.ingest.PAPER_BATCH", 1)
    twice = [*papers(), make_paper("Pointer Networks", papers()[1].abstract, "z.txt")]
    report = ingest_papers(twice, settings, HashEmbedder())
    assert (report.papers_read, report.papers_added, report.papers_updated) == (3, 3, 0)
    meta = Store(settings, "test-hash").chunk_states([papers()[1].paper_id])[papers()[1].paper_id][
        0
    ]
    assert meta["sources"] == ["a.txt", "z.txt"]


def test_querying_with_another_model_is_refused(settings: Settings) -> None:
    ingest_papers(papers(), settings, HashEmbedder())
    with pytest.raises(IndexMismatchError, match="built with embedding model 'test-hash'"):
        Store(settings, "all-MiniLM-L6-v2").count()


def test_foreign_collection_is_refused_not_wiped(settings: Settings) -> None:
    store = Store(settings, "test-hash")
    store.client.create_collection(
        settings.collection, embedding_function=None, metadata={"other": "tool"}
    )
    store.client.get_collection(settings.collection).add(
        ids=["x"], embeddings=[[1.0, 0.0]], documents=["theirs"]
    )
    with pytest.raises(IndexMismatchError, match="not built by this tool"):
        ingest_papers(papers(), settings, HashEmbedder())
    assert store.client.get_collection(settings.collection).get()["documents"] == ["theirs"]


def test_missing_index_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(RagError, match=r"no index at .*run `rag ingest` first"):
        Store(settings, "test-hash").count()


def test_second_writer_is_told_index_is_busy(settings: Settings) -> None:
    with ingest_lock(settings.index_dir), pytest.raises(RagError, match="index is busy"):
        ingest_papers(papers(), settings, HashEmbedder())


def test_chunks_fit_the_minilm_window_with_their_title(bundled_corpus: Path) -> None:
    """Measured with the real MiniLM tokenizer: title + chunk never exceed 254 word pieces."""
    from rag.embed import MiniLMEmbedder, bundled_minilm_path

    embedder = MiniLMEmbedder(bundled_minilm_path())
    assert embedder.max_tokens == 254  # 256 minus [CLS] and [SEP]
    chunker = Chunker(embedder.count_tokens, embedder.max_tokens, 32)
    corpus = merge_papers(
        x
        for f in sorted(bundled_corpus.glob("*.txt"))
        for x in iter_file(f)
        if isinstance(x, Paper)
    )
    longest, split_papers = 0, 0
    for paper in corpus.values():
        chunks = chunker.split(paper)
        split_papers += len(chunks) > 1
        for chunk in chunks:
            longest = max(longest, embedder.count_tokens(f"{paper.title}\n{chunk}"))
        # Nothing of the abstract is lost: every sentence start appears in some chunk.
        assert chunks[0][:40] == paper.abstract[:40] and paper.abstract.endswith(chunks[-1][-40:])
    assert longest <= 254
    assert split_papers > 100  # most abstracts exceed the window: splitting really happens


def test_sentence_spans_cut_at_sentence_ends_and_join_back_exactly() -> None:
    text = "We train a model. It works (mostly).  3 tasks improve! Results e.g. on (a) hold."
    spans = sentence_spans(text)
    assert "".join(spans) == text
    assert spans == [
        "We train a model. ",
        "It works (mostly).  ",
        "3 tasks improve! ",
        "Results e.g. on (a) hold.",
    ]
    assert sentence_spans("") == [] and sentence_spans("no end") == ["no end"]


def test_chunking_cuts_between_sentences_without_loading_nltk() -> None:
    """NLTK (and SciPy under it) cost 1.6 s of every ingest; abstracts need only a regex."""
    code = (
        "import sys\n"
        "from rag.ingest import Chunker\n"
        "from tests.helpers import make_paper\n"
        "words = lambda t: len(t.split())\n"
        "text = ' '.join(f'Sentence number {i} says something new.' for i in range(40))\n"
        "chunks = Chunker(words, 60, 8).split(make_paper('T', text, 'a.txt'))\n"
        "assert len(chunks) > 3, chunks\n"
        "assert all(c.rstrip().endswith('.') for c in chunks), chunks\n"
        "assert 'nltk' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_listing_metadata_round_trip(settings: Settings) -> None:
    paper = Paper(
        "id1", "T", "Some abstract text here.", (Listing("p1", "May 8"), Listing("p2", None))
    )
    ingest_papers([paper], settings, HashEmbedder())
    meta = Store(settings, "test-hash").chunk_states(["id1"])["id1"][0]
    assert meta["title"] == "T" and meta["paper_id"] == "id1"
    assert meta["dates"] == ["May 8"] and meta["sources"] == ["p1", "p2"]


def test_bm25_follows_incremental_ingests_and_is_saved_beside_the_store(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.lexical import LexicalIndex
    from rag.retrieve import BM25Retriever

    embedder = HashEmbedder()
    ingest_papers(papers(), settings, embedder)
    retriever = BM25Retriever(Store(settings, embedder.name))
    assert retriever.search("sign-based optimizer", 3)[0].title == "Lion Optimizer"
    assert retriever.search("zeolite", 3) == []

    # Another ingest (as from another process): the same retriever sees the new paper and
    # no longer sees the old text of a changed one.
    changed = make_paper("Pointer Networks", "Zeolite catalysts, now with pointers. " * 3)
    ingest_papers([changed], settings, embedder)
    assert [h.title for h in retriever.search("zeolite catalysts", 3)] == ["Pointer Networks"]
    old_text = retriever.search("attention selects input positions", 3)
    assert "Pointer Networks" not in [h.title for h in old_text]

    # A fresh retriever loads the saved index instead of rebuilding it.
    assert (settings.index_dir / "bm25" / settings.collection / "papers.json").exists()
    monkeypatch.setattr(LexicalIndex, "_build", lambda *a: pytest.fail("rebuilt"))
    fresh = BM25Retriever(Store(settings, embedder.name))
    assert [h.title for h in fresh.search("zeolite", 3)] == ["Pointer Networks"]


def test_the_exact_table_is_saved_and_a_fresh_process_loads_it_instead_of_the_store(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading every chunk back from Chroma was most of a fresh `rag search` (about 4 s at
    33,000 chunks): the first reader saves the table beside the store for the next."""
    from rag.collection import Collection

    embedder = HashEmbedder()
    ingest_papers(papers(), settings, embedder)
    query = embedder.embed(["sign-based optimizer"])[0]
    first = Store(settings, embedder.name)
    expected = [(h.chunk_id, h.score) for h in first.query(query, 5)]
    saved = settings.index_dir / "table" / settings.collection / "rows.json"
    assert saved.exists()

    with monkeypatch.context() as patch:
        patch.setattr(Collection, "_get", lambda *a, **k: pytest.fail("read from the store"))
        fresh = Store(settings, embedder.name)
        assert [(h.chunk_id, h.score) for h in fresh.query(query, 5)] == expected
        lion = first.query(query, 1)[0].metadata["paper_id"]
        assert fresh.paper_chunks([lion]) == first.paper_chunks([lion])

    ingest_papers([make_paper("Zeolites", "Zeolite catalysts crack oil. " * 3)], settings, embedder)
    later = Store(settings, embedder.name)  # the saved table is another state's: not used
    assert any(h.metadata["title"] == "Zeolites" for h in later.query(query, 10))

    saved.write_text("{damaged", encoding="utf-8")
    assert Store(settings, embedder.name).query(query, 5)  # read from the store again


def test_papers_chunks_are_read_by_id_not_by_a_filter_and_stale_chunks_are_found(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `paper_id` filter over 600,000 chunks took Chroma 200 ms a read (several per search,
    one per ingest batch); chunk ids are `PAPER#i`, a key lookup."""
    from rag.collection import CHUNKS_GUESSED

    big = settings.model_copy(update={"exact_search_max": 0})  # reads go to Chroma
    embedder = HashEmbedder()
    long_paper = make_paper("Long One", SENTENCE * 60)  # more chunks than are guessed
    ingest_papers([*papers(), long_paper], big, embedder)
    store = Store(big, embedder.name)
    col = store.open()
    wheres: list[object] = []
    includes: list[list[str]] = []
    get = type(col).get

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        wheres.append(kwargs.get("where"))
        includes.append(list(kwargs.get("include") or []))
        return get(self, *args, **kwargs)

    monkeypatch.setattr(type(col), "get", spy)
    pid = long_paper.paper_id
    chunks = store.paper_chunks([pid, "no such paper"])[pid]
    assert len(chunks) > CHUNKS_GUESSED
    assert [c.metadata["chunk"] for c in chunks] == list(range(chunks[0].metadata["n_chunks"]))
    includes.clear()
    cosines = store.chunk_cosines([pid, "no such paper"], embedder.embed(["x"])[0])
    assert list(cosines) == [pid] and set(cosines[pid]) == {c.chunk_id for c in chunks}
    assert includes and all(include == ["embeddings"] for include in includes)  # vectors only

    # An ingest that died after rewriting a paper's first chunks as a shorter version: the
    # old chunks beyond them (which name their own, larger count) are still found.
    stale = {**store.chunk_states([pid])[pid][0], "n_chunks": 2, "content_hash": "new"}
    stale.pop("id")
    col.upsert(ids=[f"{pid}#0"], embeddings=embedder.embed(["y"]), metadatas=[stale])
    assert len(store.chunk_states([pid])[pid]) == len(chunks)

    # An ingest killed mid-paper (chunks are written in batches sorted by length): a chunk far
    # after a gap is found through the count its metadata names.
    last = len(chunks) + 5  # the new version's last chunk, written with its first one
    new = [{**stale, "chunk": i, "n_chunks": last + 1} for i in (0, last)]
    vectors = embedder.embed(["y", "z"])
    col.upsert(ids=[f"{pid}#0", f"{pid}#{last}"], embeddings=vectors, metadatas=new)
    assert f"{pid}#{last}" in {c["id"] for c in store.chunk_states([pid])[pid]}
    assert wheres and all(where is None for where in wheres)


def test_the_chunk_count_is_read_once_per_generation_unless_an_ingest_is_writing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting 600,000 chunks took Chroma 40 ms warm and 2 to 7 s cold, on every search: an
    ingest saves the count it ends with, and a count of a generation no one writes is kept."""
    from rag.collection import Collection

    embedder = HashEmbedder()
    ingest_papers(papers(), settings, embedder)
    counts: list[int] = []
    count = Collection.count
    monkeypatch.setattr(Collection, "count", lambda self: counts.append(1) or count(self))
    store = Store(settings, embedder.name)
    first = store.stamp()  # a fresh process: the count the ingest saved
    assert store.stamp() == first and first[1] == count(store) and len(counts) == 0
    writer = Collection(settings, embedder.name)
    writer.bump_generation(writing=True)  # an ingest (here, or on another machine) began
    store.stamp()
    store.stamp()
    assert len(counts) == 2  # counted each time while it writes
    writer.bump_generation(writing=False)  # (and saved no count: one is taken, and kept)
    store.stamp()
    store.stamp()
    assert len(counts) == 3


def test_unchanged_reingest_keeps_the_store_generation(settings: Settings) -> None:
    embedder = HashEmbedder()
    ingest_papers(papers(), settings, embedder)
    store = Store(settings, embedder.name)
    before = store.stamp()
    ingest_papers(papers(), settings, embedder)
    assert Store(settings, embedder.name).stamp() == before
    ingest_papers([make_paper("New", "A new abstract about graphs. " * 3)], settings, embedder)
    assert Store(settings, embedder.name).stamp() > before


def test_whole_collection_reads_go_page_by_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chroma fails one unbounded read of more than ~32k records, so whole-collection reads
    (paper count, the in-memory table, the BM25 build) are paged; tested with tiny pages."""
    import rag.collection
    from rag.retrieve import BM25Retriever

    settings = Settings(index_dir=tmp_path / "ix")
    embedder = HashEmbedder()
    papers = [
        make_paper(f"Paper number {i}", f"Abstract {i} about topic{i} " * 3) for i in range(23)
    ]
    ingest_papers(papers, settings, embedder)
    monkeypatch.setattr(rag.collection, "GET_PAGE", 5)
    store = Store(settings, embedder.name)
    assert store.paper_count() == 23
    table = store.table()
    assert table is not None and len(table.ids) == store.count() == len(set(table.ids))
    chroma_only = Store(settings.model_copy(update={"exact_search_max": 0}), embedder.name)
    assert chroma_only.table() is None
    assert sorted(h.chunk_id for h in chroma_only.all_chunks()) == table.ids
    assert BM25Retriever(chroma_only).rank("topic17", 1)[0][0] == papers[17].paper_id
