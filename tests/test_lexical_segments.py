"""BM25 at scale: an ingest adds the papers it changed as a segment instead of rebuilding the
index, segments score as one index (global IDF), small segments are merged, a search during an
ingest keeps the index it has, and an ingest's bookkeeping stays a few bytes per paper."""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pytest

from rag import lexical
from rag.ingest import IngestReport, SeenPapers, ingest_lock, ingest_papers
from rag.lexical import LexicalIndex
from rag.settings import Settings
from rag.store import Store
from tests.helpers import HashEmbedder, make_paper

WORDS = (
    "glacier ice flow radar satellite ocean salinity current plankton bloom coral reef "
    "sediment core isotope volcano magma seismic fault tremor aquifer drought monsoon cyclone"
).split()


def synthetic(n: int, seed: int, prefix: str) -> list:
    rng = random.Random(seed)
    return [
        make_paper(f"{prefix} paper {i}", " ".join(rng.choices(WORDS, k=40)) + ".")
        for i in range(n)
    ]


def record(settings: Settings) -> dict:
    path = settings.index_dir / "bm25" / settings.collection / "papers.json"
    return json.loads(path.read_text())


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(index_dir=tmp_path / "index")


def never(*args: object, **kwargs: object) -> None:
    pytest.fail("the ingest read the store back for BM25")


def test_an_ingest_adds_what_it_changed_as_a_segment_and_scores_match_a_whole_build(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = HashEmbedder()
    for reading in ("chunk_pages", "paper_chunks", "all_chunks"):
        monkeypatch.setattr(Store, reading, never)  # built from the texts as they are written
    first = ingest_papers(synthetic(300, 1, "Old"), settings, embedder)
    assert first.bm25 == "a segment of 300 papers added"
    changed = make_paper("Old paper 7", "A glacier surge paper, rewritten: glacier glacier.")
    report = ingest_papers([changed, *synthetic(20, 2, "New")], settings, embedder)
    assert report.bm25 == "a segment of 21 papers added"
    monkeypatch.undo()
    segments = record(settings)["segments"]
    assert [len(s["paper_ids"]) for s in segments] == [300, 21]
    assert len(segments[0]["deleted"]) == 1  # the old text of the changed paper

    store = Store(settings, embedder.name)
    segmented = LexicalIndex(store)
    assert len(segmented.current().segments) == 2  # loaded before the whole build replaces it
    whole = LexicalIndex(store)
    whole._build(store.stamp())  # one index over the same papers, for comparison
    for query in ("glacier surge", "coral reef plankton", "volcano magma tremor"):
        ids_a, scores_a = segmented.scores(query)
        ids_b, scores_b = whole.scores(query)
        by_a = {pid: s for pid, s in zip(ids_a, scores_a, strict=True) if s > 0}
        by_b = {pid: s for pid, s in zip(ids_b, scores_b, strict=True) if s > 0}
        assert set(by_a) == set(by_b)
        assert max(by_a, key=by_a.get) == max(by_b, key=by_b.get), query
        # Global IDF: a paper's score differs only by its segment's length normalisation.
        assert all(abs(by_a[p] - by_b[p]) <= 0.15 * by_b[p] for p in by_b)
    for term in ("glacier", "surg", "coral", "volcano", "rewritten"):  # tombstones not counted
        assert segmented.current().doc_freq(term) == whole.current().doc_freq(term), term
    ids, scores = segmented.scores("glacier surge rewritten")
    assert ids[int(np.argmax(scores))] == changed.paper_id
    assert sum(1 for pid in ids if pid == changed.paper_id) == 2  # old row kept, scored 0


def test_a_large_ingest_saves_a_segment_at_a_time_and_a_paper_written_twice_lives_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lexical, "SEGMENT_PAPERS", 100)
    monkeypatch.setattr(lexical, "SMALL_SEGMENTS", 99)
    embedder = HashEmbedder()
    papers = synthetic(300, 1, "Big")
    rewritten = make_paper("Big paper 7", "Volcano magma, rewritten late in the same file.")
    report = ingest_papers([*papers, rewritten], settings, embedder)  # in another batch
    assert report.bm25 == "4 segments of 300 papers added"
    segments = record(settings)["segments"]
    assert [len(s["paper_ids"]) for s in segments] == [100, 100, 100, 1]
    dead = [s["paper_ids"][row] for s in segments for row in s["deleted"]]
    assert dead == [rewritten.paper_id] != segments[-1]["paper_ids"]  # its first text
    store = Store(settings, embedder.name)
    segmented, whole = LexicalIndex(store), LexicalIndex(store)
    assert segmented.current().papers == 300
    whole._build(store.stamp())
    for term in ("volcano", "rewritten", "glacier"):
        assert segmented.current().doc_freq(term) == whole.current().doc_freq(term), term
    ids, scores = segmented.scores("volcano magma rewritten")
    assert ids[int(np.argmax(scores))] == rewritten.paper_id


def test_an_interrupted_ingest_leaves_no_segment_behind(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lexical, "SEGMENT_PAPERS", 50)
    embedder = HashEmbedder()
    ingest_papers(synthetic(30, 1, "Base"), settings, embedder)
    folder = settings.index_dir / "bm25" / settings.collection
    before = sorted(p.name for p in folder.iterdir())

    def papers():
        yield from synthetic(300, 2, "More")  # a batch of 256 written (5 segments saved)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_papers(papers(), settings, embedder)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_segments_score_as_bm25s_itself_indexes() -> None:
    from rag.segments import Draft, bm25s_module

    rng = random.Random(5)
    docs = [rng.choices(WORDS, k=rng.randint(0, 30)) for _ in range(200)]
    draft = Draft()
    for i, doc in enumerate(docs):
        draft.add(f"p{i}", doc)
    ours = draft.model()
    theirs = bm25s_module().BM25()
    theirs.index(docs, show_progress=False)
    for word in WORDS:
        ours_at, theirs_at = ours.vocab_dict.get(word), theirs.vocab_dict.get(word)
        assert (ours_at is None) == (theirs_at is None), word
        if ours_at is None:
            continue
        a = np.zeros(200, dtype=np.float32)
        b = np.zeros(200, dtype=np.float32)
        for model, at, out in ((ours, ours_at, a), (theirs, theirs_at, b)):
            s, e = model.scores["indptr"][at], model.scores["indptr"][at + 1]
            out[model.scores["indices"][s:e]] = model.scores["data"][s:e]
        np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=word)


def test_small_segments_are_merged(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lexical, "SMALL_SEGMENTS", 2)
    monkeypatch.setattr(lexical, "SEGMENT_PAPERS", 1000)  # small: under 100 papers
    embedder = HashEmbedder()
    ingest_papers(synthetic(300, 1, "Base"), settings, embedder)
    ingest_papers(synthetic(5, 2, "A"), settings, embedder)
    assert len(record(settings)["segments"]) == 2
    ingest_papers(synthetic(5, 3, "B"), settings, embedder)
    report = ingest_papers(synthetic(5, 4, "C"), settings, embedder)
    assert "merged" in report.bm25
    sizes = [len(s["paper_ids"]) for s in record(settings)["segments"]]
    assert sizes == [300, 15], sizes
    folder = settings.index_dir / "bm25" / settings.collection
    assert len([p for p in folder.iterdir() if p.name.startswith("seg-")]) == len(sizes)
    found = LexicalIndex(Store(settings, embedder.name))
    assert found.current().papers == 315
    # The merged segment keeps its papers' chunk vectors, read back from the store.
    dense = found.dense()
    assert dense is not None and all(s.dense is not None for s in found.current().segments)
    c_paper = synthetic(5, 4, "C")[2]
    (pid, _, score), *_ = dense.nearest(embedder.embed([c_paper.abstract])[0], 1)
    assert pid == c_paper.paper_id and score > 0.9


def test_a_search_during_an_ingest_keeps_the_index_it_has(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = HashEmbedder()
    ingest_papers(synthetic(50, 1, "Base"), settings, embedder)
    index = LexicalIndex(Store(settings, embedder.name))
    assert index.current().papers == 50
    held, release = threading.Event(), threading.Event()

    def ingesting() -> None:
        with ingest_lock(settings.index_dir):
            store = Store(settings, embedder.name)
            store.bump_generation()  # the store changes while the ingest runs
            held.set()
            release.wait(30)

    thread = threading.Thread(target=ingesting)
    thread.start()
    try:
        assert held.wait(30)
        monkeypatch.setattr(LexicalIndex, "_build", lambda *a: pytest.fail("rebuilt mid-ingest"))
        assert index.current().papers == 50
    finally:
        release.set()
        thread.join()


def test_papers_read_twice_count_once_in_a_few_bytes_each() -> None:
    seen = SeenPapers()
    assert seen.add(["a", "b", "c"]) == [True, True, True]
    assert seen.add(["c", "d"]) == [False, True]
    ids = [f"p{i}" for i in range(200_000)]
    for start in range(0, len(ids), 256):
        seen.add(ids[start : start + 256])
    assert seen.add(["p5", "p199999", "new"]) == [False, False, True]
    assert seen.add(["p1", "p2"]) == [False, False]  # a batch of papers all read before
    assert seen.add(["p3", "newer"]) == [False, True]
    assert sum(run.nbytes for run in seen.runs) <= 8 * 200_010
    assert len(seen.runs) <= 20  # merged as they grow

    report, changed = IngestReport(), SeenPapers()
    report.tally({"x": "unchanged", "y": "added"}, [True, True], changed)
    report.tally({"x": "updated", "y": "unchanged"}, [False, False], changed)
    assert (report.papers_read, report.papers_added, report.papers_updated) == (2, 1, 1)
    assert report.papers_unchanged == 0
    report.tally({"x": "updated"}, [False], changed)  # changed again: counted once
    assert report.papers_updated == 1


def test_counts_stay_exact_however_many_papers_an_ingest_changes() -> None:
    report, changed = IngestReport(), SeenPapers()
    report.tally({"late": "unchanged"}, [True], changed)
    ids = [f"p{i}" for i in range(250_000)]  # beyond any list of changed papers kept
    for start in range(0, len(ids), 256):
        part = ids[start : start + 256]
        report.tally(dict.fromkeys(part, "added"), [True] * len(part), changed)
    report.tally({"late": "updated"}, [False], changed)  # read unchanged, changed later
    assert (report.papers_added, report.papers_updated, report.papers_unchanged) == (
        250_000,
        1,
        0,
    )


def test_ingests_keep_what_the_filters_can_use_so_the_ui_never_scans(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.api import Assistant
    from rag.corpus import Listing, Paper
    from rag.filters import CollectionFacts

    embedder = HashEmbedder()

    def paper(title: str, source: str, date: str | None, day: str | None = None) -> Paper:
        found = make_paper(title, f"{title} studies glaciers and sea ice in depth.", source)
        found.listings = (Listing(source, day),)
        found.date = date
        if date:
            found.categories = ("physics.ao-ph",)
        return found

    from rag.collection import Collection

    with monkeypatch.context() as patch:  # into an empty index: nothing is read back
        patch.setattr(Collection, "_pages", lambda *a, **k: pytest.fail("paged the store"))
        first = ingest_papers(
            [paper("A", "may8.txt", None, "May 8"), paper("B", "may8.txt", None, "May 8")],
            settings,
            embedder,
        )
    assert first.papers_total == 2
    store = Store(settings, embedder.name)
    scanned = CollectionFacts.of(c.metadata for c in store.all_chunks())
    assert CollectionFacts.from_json(store.facts()).to_json() == scanned.to_json()
    with monkeypatch.context() as patch:  # into one with saved facts: nothing is read back
        patch.setattr(Collection, "_pages", lambda *a, **k: pytest.fail("paged the store"))
        ingest_papers(
            [paper("C", "mine.jsonl", "2024-06-01"), paper("A", "may9.txt", None, "May 9")],
            settings,
            embedder,
        )
        ingest_papers([paper("B", "may8.txt", None, "May 8")], settings, embedder)  # again
    store = Store(settings, embedder.name)
    saved = CollectionFacts.from_json(store.facts())
    scanned = CollectionFacts.of(c.metadata for c in store.all_chunks())
    assert saved.to_json() == scanned.to_json()
    assert {s.name: s.papers for s in saved.sources.values()} == {
        "may8.txt": 2,
        "may9.txt": 1,
        "mine.jsonl": 1,
    }
    assert (saved.papers, saved.dated, saved.categories) == (3, 1, {"physics.ao-ph"})

    monkeypatch.setattr(Assistant, "_scan", lambda *a: pytest.fail("scanned the store"))
    facts = Assistant(settings.model_copy(update={"ui_scan_max_chunks": 0}), embedder=embedder)
    assert [label for label, _ in facts.collection_facts().source_choices()] == [
        "Listing page of May 8 (2 papers)",
        "Listing page of May 9 (1 paper)",
        "mine.jsonl (1 paper)",
    ]


def test_facts_are_gathered_again_after_an_interrupted_ingest(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rag.ingest
    from rag.filters import CollectionFacts

    embedder = HashEmbedder()
    ingest_papers(synthetic(3, 1, "A"), settings, embedder)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # the ingest dies after writing, before saving the facts

    monkeypatch.setattr(rag.ingest, "update_facts", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest_papers([make_paper("B paper", "glacier ice.", "other.txt")], settings, embedder)
    monkeypatch.undo()
    ingest_papers(synthetic(2, 3, "C"), settings, embedder)
    store = Store(settings, embedder.name)
    saved = CollectionFacts.from_json(store.facts())
    assert saved.papers == 6 and saved.sources["other.txt"].papers == 1


def test_the_paper_count_comes_from_the_saved_facts_until_a_write_comes_after(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting papers pages through every first chunk (minutes at 250,000 papers): after an
    ingest the count it saved is used, and an ingest adds what it added to it."""
    from rag.collection import Collection

    embedder = HashEmbedder()
    ingest_papers(synthetic(30, 1, "A"), settings, embedder)
    report = ingest_papers(synthetic(5, 2, "B"), settings, embedder)
    assert report.papers_total == 35
    store = Store(settings, embedder.name)
    pages = Collection._pages
    monkeypatch.setattr(Collection, "_pages", lambda *a, **k: pytest.fail("paged"))
    assert store.paper_count() == 35
    monkeypatch.setattr(Collection, "_pages", pages)
    store.bump_generation()  # a write the facts do not know of: counted again
    monkeypatch.setattr(Collection, "_pages", lambda *a, **k: iter([{"ids": ["x"] * 36}]))
    assert store.paper_count() == 36  # (what the paged read says)


def test_top_rows_and_row_lookup_match_a_full_sort_and_a_dictionary() -> None:
    """A query over a million papers neither sorts every score nor builds a dictionary of
    them: the top rows and a paper's row come out as the full sort and the dictionary did."""
    from rag.retrieve import best_rows
    from rag.segments import PaperIds

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 10_000).astype(np.float32)  # many ties, many zeros
    for k in (1, 10, 50, 20_000):
        expected = [i for i in np.argsort(-scores, kind="stable")[:k] if scores[i] > 0]
        assert best_rows(scores, k).tolist() == expected, k
    assert best_rows(np.zeros(3, dtype=np.float32), 2).tolist() == []
    ids = PaperIds(["a", "b", "a", "c"], np.array([False, True, True, True]))
    assert ids.rows(["a", "c", "zz"]) == {"a": 2, "c": 3}  # the live row of a, not the dead
