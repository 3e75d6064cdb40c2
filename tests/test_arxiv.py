"""Issue 8: the arXiv snapshot loader, ingest-time and query-time filters, resumable ingest and
citation links. The store tests use the small hash embedder; one end-to-end test runs `rag`
with the real model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rag import api
from rag.corpus import Paper, Problem, detect_format, iter_file, merge_papers, paper_url
from rag.errors import InputError
from rag.filters import Filter
from rag.retrieve import get_retriever
from rag.settings import Settings
from rag.store import Store
from tests.fake_llm import FakeLLM
from tests.helpers import HashEmbedder, run_rag, write_jsonl

TOPICS = {
    # arXiv id: (title, categories, update_date, words that only this paper uses)
    "2401.00001": ("Quokka routing for sparse experts", "cs.LG stat.ML", "2024-01-10", "quokka"),
    "2402.00002": ("Narwhal translation with pivot languages", "cs.CL", "2024-02-20", "narwhal"),
    "2105.00003": ("Axolotl optimizers for convex programs", "math.OC", "2021-05-03", "axolotl"),
    "1907.00004": (
        "Pangolin protein folding with attention",
        "q-bio.BM cs.LG",
        "2019-07-04",
        "pangolin",
    ),
    "2312.00005": ("Okapi retrieval for long documents", "cs.IR cs.CL", "2023-12-31", "okapi"),
}


def record(arxiv_id: str, **changes: Any) -> dict[str, Any]:
    title, categories, date, word = TOPICS[arxiv_id.split("v")[0]]
    return {
        "id": arxiv_id,
        "submitter": "Someone",
        "authors": "Ann Author and Bo Writer",
        "title": title,
        "abstract": f"We study {word} methods. The {word} approach improves results on "
        f"benchmarks, and {word} analysis explains why. Code is released.",
        "categories": categories,
        "update_date": date,
        "versions": [{"version": "v1", "created": "Mon, 1 Jan 2024 00:00:00 GMT"}],
        **changes,
    }


def snapshot_records() -> list[dict[str, Any]]:
    """The shape of arxiv-metadata-oai-snapshot.json, with its awkward cases."""
    return [
        record(
            "2401.00001",
            title="Quokka routing\n  for   sparse\nexperts",
            abstract="  We study quokka methods.\n The quokka approach improves results.\n"
            "  Quokka analysis explains   why.  ",
        ),
        record("2402.00002"),
        {
            "id": "2403.09999",
            "title": "No abstract here",
            "abstract": "  ",
            "categories": "cs.LG",
            "update_date": "2024-03-01",
            "authors": "X",
        },
        record("2105.00003"),
        record("1907.00004"),
        record("2312.00005"),
        # A second version of the first paper, then a stale copy of its first version.
        record(
            "2401.00001v2",
            abstract="We study quokka methods, version two. The quokka "
            "approach improves results further.",
            update_date="2024-06-01",
        ),
        record(
            "2401.00001v1", abstract="Stale first version about quokka.", update_date="2024-01-10"
        ),
        {
            "id": "hep-th/9901001",
            "title": "Old style\nidentifier",
            "abstract": "Strings. " * 5,
            "categories": "hep-th",
            "update_date": "2007-05-23",
            "authors": "Y",
        },
    ]


@pytest.fixture
def snapshot_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "arxiv-metadata-oai-snapshot.json", snapshot_records())


def test_snapshot_is_detected_and_read_with_ids_categories_dates_and_clean_text(
    snapshot_file: Path,
) -> None:
    assert detect_format(snapshot_file) == "arxiv"
    items = list(iter_file(snapshot_file))
    problems = [str(i) for i in items if isinstance(i, Problem)]
    assert problems == [
        f"{snapshot_file}:3: record 'No abstract here' has no abstract "
        "(field abstract/text/summary)"
    ]
    papers = merge_papers(i for i in items if isinstance(i, Paper))
    assert sorted(papers) == sorted([*TOPICS, "hep-th/9901001"])
    quokka = papers["2401.00001"]
    assert quokka.title == "Quokka routing for sparse experts"  # line breaks and runs collapsed
    assert quokka.arxiv_id == "2401.00001" and quokka.categories == ("cs.LG", "stat.ML")
    # The newest version wins, whatever order the versions come in.
    assert quokka.date == "2024-06-01" and "version two" in quokka.abstract
    assert quokka.meta == {"authors": "Ann Author and Bo Writer"}
    old = papers["hep-th/9901001"]
    assert old.title == "Old style identifier" and old.arxiv_id == "hep-th/9901001"
    # A plain JSON Lines file is not taken for a snapshot.
    plain = write_jsonl(snapshot_file.with_name("plain.jsonl"), [{"title": "T", "text": "x"}])
    assert detect_format(plain) == "jsonl"


def test_ingest_keeps_ids_links_and_the_newest_version_across_batches(
    snapshot_file: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rag.ingest.PAPER_BATCH", 2)  # versions fall into different batches
    embedder = HashEmbedder()
    report = api.ingest([snapshot_file], settings, embedder=embedder)
    assert report.papers_total == 6 and len(report.errors) == 1
    retriever = get_retriever(settings, embedder, "bm25")
    (hit,) = retriever.search("quokka", 1)
    assert hit.arxiv_id == "2401.00001" and hit.url == "https://arxiv.org/abs/2401.00001"
    assert hit.categories == ["cs.LG", "stat.ML"] and hit.date == "2024-06-01"
    retriever.attach_texts([hit])
    assert "version two" in hit.text and "Stale" not in hit.text
    assert hit.to_json()["url"] == "https://arxiv.org/abs/2401.00001"


def test_recategorised_paper_updates_metadata_without_embedding(
    tmp_path: Path, settings: Settings
) -> None:
    embedder = HashEmbedder()
    first = write_jsonl(tmp_path / "a.json", [record("2402.00002")])
    api.ingest([first], settings, embedder=embedder)
    calls = embedder.calls
    moved = write_jsonl(tmp_path / "a.json", [record("2402.00002", categories="cs.CL cs.AI")])
    report = api.ingest([moved], settings, embedder=embedder)
    assert (report.papers_updated, report.chunks_embedded, embedder.calls) == (1, 0, calls)
    store = Store(settings, embedder.name)
    assert store.admitted_papers(Filter(categories=("cs.AI",))) == {"2402.00002"}


def test_ingest_filters_keep_any_listed_category_and_recent_papers(
    snapshot_file: Path, settings: Settings
) -> None:
    keep = Filter(since="2023-12-31", categories=("cs.LG", "cs.IR"))
    report = api.ingest([snapshot_file], settings, embedder=HashEmbedder(), keep=keep)
    store = Store(settings, HashEmbedder.name)
    # cs.LG from 2024 (quokka, both versions), cs.IR on the very day (okapi); pangolin is
    # cs.LG but from 2019, narwhal is recent but cs.CL only.
    assert store.admitted_papers(Filter()) == {"2401.00001", "2312.00005"}
    assert report.papers_filtered == 4 and report.papers_total == 2  # and the hep-th paper


def filtered_corpus(tmp_path: Path) -> list[Path]:
    """The five topic papers, split over two files (two sources)."""
    ids = list(TOPICS)
    return [
        write_jsonl(tmp_path / "first.json", [record(i) for i in ids[:3]]),
        write_jsonl(tmp_path / "second.json", [record(i) for i in ids[3:]]),
    ]


FILTERS = [
    Filter(categories=("cs.LG",)),  # quokka, pangolin
    Filter(categories=("cs.CL", "math.OC")),  # narwhal, axolotl, okapi
    Filter(since="2024-01-01"),  # quokka, narwhal
    Filter(sources=("second.json",)),  # pangolin, okapi
    Filter(since="2020-01-01", categories=("cs.LG",), sources=("first.json",)),  # quokka
    Filter(categories=("astro-ph",)),  # nothing
]


@pytest.mark.parametrize("exact", [True, False], ids=["exact-table", "chroma-hnsw"])
def test_excluded_papers_are_never_retrieved_or_cited(
    tmp_path: Path, exact: bool, fake_llm: FakeLLM
) -> None:
    settings = Settings(
        index_dir=tmp_path / "index",
        exact_search_max=10_000 if exact else 0,
        min_relevance=0.0,
        summary_min_relevance=0.0,
    )
    embedder = HashEmbedder()
    api.ingest(filtered_corpus(tmp_path), settings, embedder=embedder)
    store = Store(settings, embedder.name)
    metas = {h.metadata["paper_id"]: h.metadata for h in store.all_chunks()}
    llm_settings = Settings(
        **settings.model_dump(include={"index_dir", "exact_search_max", "min_relevance"}),
        openai_api_key="sk-test",
        openai_base_url=fake_llm.base_url,
        llm_model="m",
        llm_max_retries=0,
    )
    fake_llm.default = lambda body: "Findings [1][2][3][4][5]."  # cites every source it gets
    for filters in FILTERS:
        admitted = {pid for pid, meta in metas.items() if filters.matches(meta)}
        for mode in ("dense", "bm25", "hybrid"):
            retriever = get_retriever(settings, embedder, mode)
            if not admitted:  # nothing to search: said in one line, nothing is answered
                with pytest.raises(InputError, match="No paper matches the filters"):
                    api.search("quokka", settings, k=5, retriever=retriever, filters=filters)
                with pytest.raises(InputError, match="No paper matches the filters"):
                    api.ask("quokka?", llm_settings, retriever=retriever, filters=filters)
                continue
            for word in ("quokka", "narwhal", "axolotl", "pangolin", "okapi"):
                found = api.search(word, settings, k=5, retriever=retriever, filters=filters)
                assert {p.paper_id for p in found} <= admitted, (filters, mode, word)
                if mode == "bm25":  # lexical: an admitted paper with the word is found
                    owner = {pid for pid, t in TOPICS.items() if t[3] == word}
                    assert owner & admitted <= {p.paper_id for p in found}
            for no_llm in (True, False):
                answer = api.ask(
                    "quokka narwhal axolotl pangolin okapi",
                    llm_settings,
                    no_llm=no_llm,
                    retriever=retriever,
                    embedder=embedder,
                    filters=filters,
                )
                assert {s.paper_id for s in answer.sources} <= admitted
                assert {s.paper_id for s in answer.citations} <= admitted
            summary = api.summarize(
                "quokka narwhal axolotl pangolin okapi",
                settings,
                no_llm=True,
                retriever=retriever,
                embedder=embedder,
                filters=filters,
            )
            assert {s.paper_id for s in summary.citations} <= admitted
        # Without the filter the same searches do reach the excluded papers.
        unfiltered = api.search(
            "quokka narwhal axolotl pangolin okapi",
            settings,
            k=5,
            retriever=get_retriever(settings, embedder, "bm25"),
        )
        assert {p.paper_id for p in unfiltered} == set(TOPICS)


def test_follow_up_keeps_no_excluded_paper(tmp_path: Path) -> None:
    """An extractive follow-up pins the papers cited before; a filter set since then wins."""
    from rag.conversation import Turn

    settings = Settings(index_dir=tmp_path / "index", min_relevance=0.0)
    embedder = HashEmbedder()
    api.ingest(filtered_corpus(tmp_path), settings, embedder=embedder)
    retriever = get_retriever(settings, embedder)
    before = Turn("Tell me about quokka routing", "...", "quokka", ["2401.00001"])
    answer, _ = api.chat(
        "What else does it show?",
        [before],
        settings,
        no_llm=True,
        retriever=retriever,
        embedder=embedder,
        filters=Filter(categories=("cs.CL",)),
    )
    assert "2401.00001" not in {s.paper_id for s in answer.sources}


def test_filter_where_and_matches_agree_with_chroma(tmp_path: Path) -> None:
    """The same filter pushed into Chroma and applied in memory selects the same papers."""
    settings = Settings(index_dir=tmp_path / "index", exact_search_max=0)
    api.ingest(filtered_corpus(tmp_path), settings, embedder=HashEmbedder())
    store = Store(settings, HashEmbedder.name)
    metas = [h.metadata for h in store.all_chunks()]
    for filters in FILTERS:
        in_memory = {m["paper_id"] for m in metas if filters.matches(m)}
        assert store.admitted_papers(filters) == in_memory, filters  # Chroma `where`


def test_interrupted_ingest_resumes_at_its_checkpoint(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rag.ingest.PAPER_BATCH", 4)
    records = [
        {
            "id": f"2401.{n:05d}",
            "title": f"Paper {n} on topic {n}",
            "abstract": f"Words {n}. " * 8,
            "categories": "cs.LG",
            "update_date": "2024-01-02",
            "authors": "A",
        }
        for n in range(1, 15)
    ]
    snapshot = write_jsonl(tmp_path / "snap.json", records)

    class Interrupted(Exception):
        pass

    class Failing(HashEmbedder):
        def embed(self, texts: Any) -> Any:
            if self.calls == 2:  # two batches written, then the third fails
                raise Interrupted
            return super().embed(texts)

    with pytest.raises(Interrupted):
        api.ingest([snapshot], settings, embedder=Failing())
    assert len(Store(settings, HashEmbedder.name).admitted_papers(Filter())) == 8

    again = HashEmbedder()
    report = api.ingest([snapshot], settings, embedder=again)
    assert report.resumed == [f"{snapshot}: from line 8"]  # the 8th record is read again
    assert (report.papers_read, report.papers_unchanged, report.papers_added) == (7, 1, 6)
    assert again.texts_embedded == 6 and report.papers_total == 14
    assert not list((settings.index_dir / "ingest-progress").glob("*.json"))  # done: removed

    # Read to the end, the file starts from its first line next time.
    report = api.ingest([snapshot], settings, embedder=HashEmbedder())
    assert report.resumed == [] and report.papers_unchanged == 14


def test_changed_file_starts_afresh_despite_a_checkpoint(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.ingest import Checkpoints
    from rag.reading import FilePosition

    snapshot = write_jsonl(tmp_path / "snap.json", [record(i) for i in TOPICS])
    checkpoints = Checkpoints(settings)
    how = json.dumps(["arxiv", [None, None, None], repr(None)])
    checkpoints.save(checkpoints.key(snapshot, how), FilePosition(10**6, 3))
    write_jsonl(snapshot, [record(i) for i in TOPICS][:4])  # rewritten: other size and time
    report = api.ingest([snapshot], settings, embedder=HashEmbedder())
    assert report.resumed == [] and report.papers_added == 4


def test_cli_ingests_a_snapshot_with_filters_and_searches_with_them(tmp_path: Path) -> None:
    """End to end with the real model: `--category`/`--since` at ingest and at query time,
    arXiv links in the JSON, and the one-line error for a bad date."""
    snapshot = write_jsonl(tmp_path / "arxiv-metadata-oai-snapshot.json", snapshot_records())
    ingest = run_rag("ingest", str(snapshot), "--category", "cs.LG cs.CL", "--json")
    assert ingest.returncode == 0, ingest.stderr
    report = json.loads(ingest.stdout)
    # Kept: quokka (cs.LG), narwhal (cs.CL), pangolin (cs.LG), okapi (cs.CL); left out:
    # axolotl (math.OC) and the hep-th paper. The record without an abstract is an error.
    assert report["papers_total"] == 4 and report["papers_filtered"] == 2
    search = run_rag("search", "protein folding", "--since", "2024-01-01", "--json")
    assert search.returncode == 0, search.stderr
    results = json.loads(search.stdout)["results"]
    assert results and all(r["date"] >= "2024-01-01" for r in results)
    assert all(r["url"] == f"https://arxiv.org/abs/{r['paper_id']}" for r in results)
    only = run_rag("search", "protein folding", "--category", "q-bio.BM", "--json")
    assert [r["paper_id"] for r in json.loads(only.stdout)["results"]] == ["1907.00004"]
    typed = run_rag("search", "protein folding", "--category", "Q-BIO.bm", "--json")
    assert [r["paper_id"] for r in json.loads(typed.stdout)["results"]] == ["1907.00004"]
    none = run_rag("search", "protein folding", "--since", "2031-01-01")
    assert none.returncode == 2 and "No paper matches the filters (since 2031-01-01)" in none.stderr
    bad = run_rag("search", "x", "--since", "yesterday")
    assert bad.returncode == 2 and "not a date like 2024-01-31" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_links_go_to_arxiv_when_the_id_is_known() -> None:
    assert paper_url("Any", "2401.00001") == "https://arxiv.org/abs/2401.00001"
    assert paper_url("Pointer Networks") == "https://huggingface.co/papers?q=Pointer+Networks"
