"""`rag eval`: metric functions against hand-computed values, question files, the command end to
end (extractive and through the loopback LLM server), and BEIR scoring on a tiny data set."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rag.errors import InputError
from rag.eval.beir import load_beir
from rag.eval.metrics import (
    fact_recall,
    mean,
    ndcg_at_k,
    percentile,
    precision_recall,
    ranked,
    recall_at_k,
    reciprocal_rank,
)
from rag.eval.questions import load_questions
from rag.settings import Settings
from tests.fake_llm import FakeLLM
from tests.helpers import run_rag, write_jsonl

# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("retrieved", "gold", "k", "expected"),
    [
        (["a", "b", "c"], {"a"}, 1, 1.0),
        (["b", "a", "c"], {"a"}, 1, 0.0),
        (["b", "a", "c"], {"a", "c", "d"}, 3, 2 / 3),
        (["a", "a", "b"], {"a", "b"}, 2, 0.5),  # a repeat wastes its slot
        (["a", "a", "b"], {"a", "b"}, 3, 1.0),
        ([], {"a"}, 5, 0.0),
        (["a"], set(), 5, None),  # no gold (unanswerable): undefined, not 0
    ],
)
def test_recall_at_k(retrieved: list[str], gold: set[str], k: int, expected: float | None) -> None:
    assert recall_at_k(retrieved, gold, k) == expected


@pytest.mark.parametrize(
    ("retrieved", "gold", "expected"),
    [
        (["a", "b"], {"a"}, 1.0),
        (["x", "y", "a"], {"a", "y"}, 0.5),
        (["x", "x", "a"], {"a"}, 1 / 3),
        (["x", "y"], {"a"}, 0.0),
        (["x"], [], None),
    ],
)
def test_reciprocal_rank(retrieved: list[str], gold: set[str], expected: float | None) -> None:
    assert reciprocal_rank(retrieved, gold) == expected


def test_ndcg_binary_by_hand() -> None:
    # gold {a, b}; a at rank 1, b at rank 3: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3).
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}, 10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert ndcg_at_k(["a"], set(), 10) is None


def test_ndcg_counts_a_repeat_once_and_cuts_at_k() -> None:
    # [a, a, b]: the second "a" gains nothing, b gains 1/log2(4).
    expected = (1 + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["a", "a", "b"], {"a", "b"}, 3) == pytest.approx(expected)
    assert ndcg_at_k(["x", "a"], {"a"}, 1) == 0.0


def test_ndcg_graded_like_beir_qrels() -> None:
    grades = {"a": 2.0, "b": 1.0, "z": 0.0}  # grade 0 is not relevant
    dcg = 1 / 1 + 2 / math.log2(3)  # b at rank 1, a at rank 2
    idcg = 2 / 1 + 1 / math.log2(3)
    assert ndcg_at_k(["b", "a", "z"], grades, 10) == pytest.approx(dcg / idcg)


def test_ties_are_broken_by_key_so_rankings_are_deterministic() -> None:
    scores = {"c": 0.5, "b": 0.9, "a": 0.5}
    assert ranked(scores) == ["b", "a", "c"]
    assert ranked(dict(reversed(list(scores.items())))) == ["b", "a", "c"]
    # With the tie broken by key, the gold "c" is at rank 3 whatever the input order.
    assert reciprocal_rank(ranked(scores), {"c"}) == pytest.approx(1 / 3)


def test_citation_precision_recall() -> None:
    assert precision_recall({"a", "x"}, {"a", "b"}) == (0.5, 0.5)
    assert precision_recall(set(), {"a"}) == (None, 0.0)  # nothing cited: precision undefined
    assert precision_recall({"a"}, set()) == (0.0, None)


def test_fact_recall_ignores_case_and_spacing() -> None:
    answer = "It compares 92  algorithms from 33 International teams."
    assert fact_recall(answer, ["92 algorithms", "33 international teams", "ADAS-Cog13"]) == (
        pytest.approx(2 / 3)
    )
    assert fact_recall(answer, []) is None


def test_mean_and_percentile() -> None:
    assert mean([1.0, None, 0.0]) == 0.5
    assert mean([None]) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # numpy's linear interpolation
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([], 50) is None


# ---------------------------------------------------------------- question files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"qid": "1", "type": "single", "question": "Q?", "gold_titles": ["T"]}\nnot json\n',
            r"q\.jsonl:2: not valid JSON",
        ),
        ('{"qid": "1", "type": "single", "gold_titles": ["T"]}\n', r"q\.jsonl:1: .*'question'"),
        ('{"qid": "1", "type": "single", "question": "Q?"}\n', r"q\.jsonl:1: .*needs gold_titles"),
        (
            '{"qid": "1", "type": "multi", "question": "Q?", "gold_titles": "T"}\n',
            r"'gold_titles' must be a list",
        ),
        ('{"qid": "1", "type": "unanswerable", "question": "Q?"}\n' * 2, r"duplicate qid '1'"),
        ("\n\n", r"q\.jsonl: file is empty"),
    ],
)
def test_bad_question_files_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_questions(path)


def test_unanswerable_questions_need_no_gold(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"qid": 7, "type": "unanswerable", "question": "Q?"}])
    (question,) = load_questions(path)
    assert (question.qid, question.gold_titles, question.facts) == ("7", [], [])


# ---------------------------------------------------------------- rag eval end to end

SAMPLE = [json.loads(line) for line in (Path(__file__).parent / "data" / "dev_sample.jsonl").open()]
UNANSWERABLE = {
    "qid": "u1",
    "type": "unanswerable",
    "question": "What is the best hydration level for a sourdough bread with rye flour?",
    "gold_titles": [],
    "answer": "not covered",
    "facts": [],
}


def few_questions(tmp_path: Path) -> Path:
    picked = [q for q in SAMPLE if q["qid"] in {"q013", "q073", "q111"}] + [UNANSWERABLE]
    return write_jsonl(tmp_path / "questions.jsonl", picked)


RESULT_FIELDS = {"qid", "type", "question", "retrieved", "answer", "citations", "mode", "latency_s"}


def test_eval_no_llm_writes_results_metrics_report_and_plot(
    corpus_settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = [
        "eval",
        "--questions",
        str(few_questions(tmp_path)),
        "--no-llm",
        "--k",
        "10",
        "--out",
        str(out),
        "--retriever",
        "hybrid",
        "--retriever",
        "dense",
    ]
    proc = run_rag(*args)
    assert proc.returncode == 0, proc.stderr
    assert "| hybrid |" in proc.stdout and "| dense |" in proc.stdout

    rows = [json.loads(line) for line in (out / "results.jsonl").open()]
    assert len(rows) == 8  # 4 questions x 2 modes
    for row in rows:
        assert RESULT_FIELDS <= set(row)
        assert len(row["retrieved"]) == 10 and row["mode"] == "extractive"
    by_qid = {r["qid"]: r for r in rows if r["retriever"] == "hybrid"}
    assert by_qid["q013"]["retrieved"][0] == "Pointer Networks"
    assert "Pointer Networks" in by_qid["q013"]["citations"]
    assert by_qid["u1"]["citations"] == [] and by_qid["u1"]["refused"]

    metrics = json.loads((out / "metrics.json").read_text())
    hybrid = metrics["modes"]["hybrid"]
    for name in (
        "recall@1",
        "recall@5",
        "recall@10",
        "mrr",
        "ndcg@10",
        "citation_precision",
        "citation_recall",
        "fact_recall",
    ):
        assert name in hybrid["overall"]
    assert set(hybrid["by_type"]) == {"single", "multi", "title", "unanswerable"}
    assert hybrid["single_and_title"]["recall@1"] == 1.0
    refusal = hybrid["refusal"]
    assert {k: refusal[k] for k in ("unanswerable", "refusal_accuracy", "answerable")} == {
        "unanswerable": 1,
        "refusal_accuracy": 1.0,
        "answerable": 3,
    }
    assert refusal["false_refusal_rate"] == 0.0 and set(refusal["false_refusal_by_type"]) == {
        "single",
        "multi",
        "title",
    }
    curve = {p["threshold"]: p for p in refusal["curve"]}
    assert curve[0.3]["answerable"] == 0.0 and curve[0.6]["unanswerable"] == 1.0
    assert (out / "refusal_curve.png").read_bytes().startswith(b"\x89PNG")
    assert hybrid["latency_s"]["p50"] > 0 and len(hybrid["recall_curve"]) == 10
    report = (out / "report.md").read_text()
    assert "## hybrid: by question type" in report and "recall_at_k.png" in report
    assert (out / "recall_at_k.png").read_bytes().startswith(b"\x89PNG")

    # Deterministic: the same run again gives the same rankings, answers and metrics.
    again = run_rag(*args[:-4], "--out", str(tmp_path / "again"), "--retriever", "hybrid")
    assert again.returncode == 0, again.stderr
    rerun = [json.loads(line) for line in (tmp_path / "again" / "results.jsonl").open()]
    strip = ("latency_s",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in rerun] == [
        {k: v for k, v in r.items() if k not in strip} for r in rows if r["retriever"] == "hybrid"
    ]


def test_eval_through_an_llm_scores_its_citations_and_facts(
    corpus_settings: Settings, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    def reply(body: dict) -> str:
        # Cite the source titled "Pointer Networks" when it is there, else refuse.
        found = re.search(
            r'<source n="(\d+)">\nTitle: Pointer Networks\n', body["messages"][-1]["content"]
        )
        if found:
            return f"Pointer networks use attention as a pointer [{found.group(1)}] [99]."
        return "The collection does not cover this question."

    fake_llm.default = reply
    env = {
        "OPENAI_API_KEY": "sk-test-eval-0000",
        "OPENAI_BASE_URL": fake_llm.base_url,
        "RAG_LLM_MODEL": "fake",
        "RAG_LLM_MAX_RETRIES": "0",
    }
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {**next(q for q in SAMPLE if q["qid"] == "q013"), "facts": ["pointer", "softmax"]},
            UNANSWERABLE,
        ],
    )
    out = tmp_path / "out"
    proc = run_rag("eval", "--questions", str(questions), "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["qid"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    assert rows["q013"]["mode"] == "llm"
    assert rows["q013"]["citations"] == ["Pointer Networks"]  # [99] was dropped
    assert rows["q013"]["scores"]["fact_recall"] == 0.5
    assert rows["q013"]["scores"]["citation_precision"] == 1.0
    assert rows["u1"]["refused"]
    # The evidence threshold refused u1 before any LLM call: one chat request in all.
    assert len(fake_llm.chat_requests()) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["llm_model"] == "fake"
    for path in out.iterdir():
        assert b"sk-test-eval-0000" not in path.read_bytes()


def test_eval_scores_each_claim_against_the_source_it_cites(
    corpus_settings: Settings, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """Scripted answers: one claim cited right, one cited to another paper, one uncited, one
    with a changed number; the claim metrics count each as it should."""

    def reply(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        numbers = dict(re.findall(r'<source n="(\d+)">\nTitle: (.*)\n', prompt))
        pointer = next(n for n, title in numbers.items() if title == "Pointer Networks")
        other = next(n for n in numbers if n != pointer)
        return (
            f"Pointer networks use attention as a pointer to select a member of the input "
            f"sequence as the output [{pointer}]. "
            f"The model was trained on Google's Sycamore quantum processor [{other}]. "
            f"Ptr-Nets learn approximate solutions to challenging geometric problems such as "
            f"planar convex hulls. "
            f"We show Ptr-Nets can be used to learn approximate solutions to seven challenging "
            f"geometric problems [{pointer}]."
        )

    fake_llm.default = reply
    env = {
        "OPENAI_API_KEY": "sk-claims-eval",
        "OPENAI_BASE_URL": fake_llm.base_url,
        "RAG_LLM_MAX_RETRIES": "0",
        "RAG_CITATION_REPAIR": "false",
    }
    questions = write_jsonl(tmp_path / "q.jsonl", [next(q for q in SAMPLE if q["qid"] == "q013")])
    out = tmp_path / "out"
    proc = run_rag("eval", "--questions", str(questions), "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    (row,) = map(json.loads, (out / "results.jsonl").open())
    assert [c["verdict"] for c in row["claims"]] == ["supported", "unsupported", "uncited", "weak"]
    assert row["claims"][2]["better_source"] is not None  # named, not used: repair is off
    scores = row["scores"]
    assert scores["claim_recall"] == 0.25 and scores["uncited_rate"] == 0.25
    assert scores["claim_precision"] == round(2 / 3, 4) and scores["repairs"] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    claims = metrics["modes"]["hybrid"]["claims"]
    assert claims == {
        "claims": 4,
        "supported": 1,
        "weak": 1,
        "unsupported": 1,
        "uncited": 1,
        "repairs": 0,
    }
    assert "| hybrid | 4 | 1 | 1 | 1 | 1 | 0 |" in proc.stdout
    assert (out / "claims.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --questions FILE and --beir DIR"),
        (["--questions", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--questions", "q.jsonl", "--retriever", "sparse"], "Invalid value for '--retriever'"),
        (["--beir", "nowhere"], "nowhere: not a directory"),
    ],
)
def test_eval_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run_rag("eval", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- BEIR


def write_beir(root: Path) -> Path:
    root.mkdir()
    docs = {
        "d1": ("Pointer Networks", "Attention used as a pointer selects positions of the input."),
        "d2": ("Lion optimizer", "A sign-based optimizer found by program search; less memory."),
        "d3": ("Coffee leaf rust", "A smartphone app detects coffee leaf rust and leaf miner."),
        "d4": ("Quantum LSTM", "Quantum recurrent cells for sequence modelling without gradients."),
        "d5": ("TADPOLE challenge", "92 algorithms from 33 teams predicted Alzheimer's disease."),
    }
    write_jsonl(
        root / "corpus.jsonl", [{"_id": k, "title": t, "text": x} for k, (t, x) in docs.items()]
    )
    write_jsonl(
        root / "queries.jsonl",
        [
            {"_id": "1", "text": "attention as a pointer to input positions"},
            {"_id": "2", "text": "memory-saving sign-based optimizer"},
            {"_id": "3", "text": "not judged, so not scored"},
        ],
    )
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n1\td1\t1\n2\td2\t2\n2\td5\t0\n", encoding="utf-8"
    )
    return root


def test_beir_eval_scores_judged_queries_and_reuses_its_index(tmp_path: Path) -> None:
    data = write_beir(tmp_path / "tiny")
    index_dir, out = tmp_path / "beir-index", tmp_path / "out"
    proc = run_rag("eval", "--beir", str(data), "--index-dir", str(index_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").open()]
    assert [r["query_id"] for r in rows] == ["1", "2"]  # only queries with judgements
    assert rows[0]["retrieved_ids"][0] == "d1" and rows[1]["retrieved_ids"][0] == "d2"
    assert sorted(rows[0]["retrieved_ids"]) == ["d1", "d2", "d3", "d4", "d5"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ndcg@10"] == 1.0 and metrics["recall@100"] == 1.0
    assert metrics["queries"] == 2 and metrics["documents"] == 5
    assert metrics["chunks_embedded"] == 5
    assert "nDCG@10" in (out / "report.md").read_text()

    again = run_rag(
        "eval", "--beir", str(data), "--index-dir", str(index_dir), "--out", str(out), "--json"
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["chunks_embedded"] == 0  # the index was reused


def test_beir_loader_reports_missing_parts(tmp_path: Path) -> None:
    data = write_beir(tmp_path / "tiny")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n9\td1\t1\n")
    with pytest.raises(InputError, match=r"queries not in queries\.jsonl: 9"):
        load_beir(data)
    (data / "queries.jsonl").unlink()
    with pytest.raises(InputError, match=r"queries\.jsonl: missing"):
        load_beir(data)
