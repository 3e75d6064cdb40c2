"""The Gradio chat front-end: a thin shell over `rag.api.Assistant`.

Answers stream token by token; the Sources panel lists the cited papers (title, the sentence
that supports the answer, listing dates, links) and, apart, the papers retrieved but not cited.
The same chat is the API endpoint `/chat` for scripts (`gradio_client`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# No analytics, version checks or hub telemetry: the app must run offline and leak nothing.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr

from rag.api import Assistant
from rag.conversation import Turn
from rag.errors import RagError
from rag.export import cited_bibtex, conversation_markdown
from rag.filters import Filter
from ui.render import (
    api_text,
    as_text,
    chat_message,
    follow_ups,
    render_sources,
    render_summary,
    streaming_text,
)

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.settings import Settings

log = logging.getLogger(__name__)
TITLE = "Literature assistant"
EXAMPLES = [
    "How does L-Mul replace floating point multiplication, and how accurate is it?",
    "Which papers study the Lion optimizer, and what do they find?",
    "Which datasets or benchmarks exist for medical image segmentation?",
    "What does SINDy-RL combine, and what does it gain?",
]
NO_LLM_BANNER = (
    "**Extractive mode**: answers quote the abstracts. For written answers set "
    "`OPENAI_API_KEY`, `OPENAI_BASE_URL` and `RAG_LLM_MODEL`, then restart."
)
EMPTY_SOURCES = "### Sources\nAsk a question: the papers behind the answer appear here."
WORKING = "_Searching the collection and writing the answer…_"
MODES = ("LLM", "Extractive")
# On a phone the chat is shorter, so the question box is on the first screen (below the banner).
PHONE_CSS = "@media (max-width: 640px) { #chat { height: 42vh !important; max-height: 42vh; } }"
# Chats served at once: most of a chat is waiting on the LLM, so many fit on 2 cores.
CONCURRENCY = 32


def _content_text(content: Any) -> str:
    """Chat message content as text (Gradio 6 gives a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def turns_from_messages(history: Sequence[dict[str, Any]] | None) -> list[Turn]:
    """Turns from a messages-format history (user, assistant, user, ...), for `/chat` callers."""
    turns: list[Turn] = []
    pending: str | None = None
    for message in history or []:
        if not isinstance(message, dict):
            continue
        text = _content_text(message.get("content"))
        if message.get("role") == "user":
            pending = text
        elif message.get("role") == "assistant" and pending is not None:
            turns.append(Turn(pending, text))
            pending = None
    return turns


class Stopped(Exception):
    """The reader stopped the answer (Stop, Clear, or a closed page)."""


def in_background(work: Any) -> Iterator[Any]:
    """Run `work(emit)` in a thread; yield what it emits, then its result or its `RagError`.
    Closing this generator (Gradio does when the event is cancelled) makes the next `emit`
    raise, which ends the LLM stream and closes its connection."""
    items: queue.Queue[Any] = queue.Queue()
    done = object()
    stop = threading.Event()

    def emit(item: Any) -> None:
        if stop.is_set():
            raise Stopped
        items.put(item)

    def run() -> None:
        try:
            items.put(work(emit))
        except Stopped:
            pass
        except RagError as exc:
            items.put(exc)
        except Exception as exc:  # a bug must end in a message, never a chat stuck waiting
            log.exception("answering failed")
            items.put(RagError(f"something went wrong ({exc.__class__.__name__}); see the log"))
        finally:
            items.put(done)

    threading.Thread(target=run, daemon=True).start()
    try:
        while (item := items.get()) is not done:
            yield item
    finally:
        stop.set()


def saved(answers: Sequence[Answer]) -> tuple[str | None, str | None]:
    """The conversation as a Markdown file and its cited papers as a BibTeX file, for the
    download buttons (None: nothing to save yet)."""
    if not answers:
        return None, None
    folder = Path(tempfile.mkdtemp(prefix="rag-export-"))
    markdown = folder / "conversation.md"
    markdown.write_text(conversation_markdown(answers), encoding="utf-8")
    bib = cited_bibtex(answers)
    if not bib.strip():
        return str(markdown), None
    references = folder / "references.bib"
    references.write_text(bib, encoding="utf-8")
    return str(markdown), str(references)


def build_app(settings: Settings, assistant: Assistant | None = None) -> gr.Blocks:
    assistant = assistant or Assistant(settings)
    llm_ready = settings.llm_configured

    def respond(
        message: str,
        chat: list[dict[str, Any]],
        turns: list[Turn],
        answers: list[Answer],
        k: float,
        mode: str,
        answer_mode: str,
        model: str,
        since: str,
        categories: str,
        sources: list[str],
    ) -> Iterator[tuple[Any, ...]]:
        chat = list(chat or [])
        skip = (gr.skip(),) * 4  # answers, the two downloads, the suggested follow-ups
        if not (message or "").strip():
            yield chat, gr.skip(), "", turns, *skip
            return
        request = assistant.adjusted(
            no_llm=answer_mode != "LLM" or not llm_ready,
            top_k=int(k),
            retriever=mode,
            llm_model=(model or "").strip() or None,
        )
        chat += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        try:
            filters = Filter.from_text(since, categories, sources or [])
        except RagError as exc:
            chat[-1] = {"role": "assistant", "content": f"⚠️ Filters: {as_text(str(exc))}"}
            yield chat, gr.skip(), message, turns, *skip
            return
        chat[-1] = {"role": "assistant", "content": WORKING}
        # The box is emptied once, now: what is typed while the answer is written stays.
        yield chat, "### Sources\n_Searching the collection…_", "", turns, *skip
        streamed = ""
        for item in in_background(
            lambda emit: request.chat(message, turns, on_token=emit, filters=filters)
        ):
            if isinstance(item, str):
                streamed += item
                chat[-1] = {"role": "assistant", "content": streaming_text(streamed, int(k))}
                yield chat, gr.skip(), gr.skip(), turns, *skip
            elif isinstance(item, RagError):
                note = "\n\n_(answer interrupted)_" if streamed else ""
                text = f"{as_text(streamed)}{note}\n\n⚠️ {as_text(str(item))}"
                chat[-1] = {"role": "assistant", "content": text}
                failed = "### Sources\n_No answer: see the message in the chat._"
                yield chat, failed, gr.skip(), turns, *skip
            else:
                answer, turn = item
                chat[-1] = {"role": "assistant", "content": chat_message(answer, len(turns))}
                kept = [*answers, answer]
                nexts = gr.Dataset(samples=[[q] for q in follow_ups(answer)])
                sources_md = render_sources(answer)
                yield chat, sources_md, gr.skip(), [*turns, turn], kept, *saved(kept), nexts

    def fresh() -> tuple[Any, ...]:
        return [], EMPTY_SOURCES, [], [], None, None, gr.Dataset(samples=[])

    def summarize_topic(
        topic: str,
        max_papers: float,
        answer_mode: str,
        since: str,
        categories: str,
        sources: list[str],
    ) -> Iterator[str]:
        if not (topic or "").strip():
            yield "Type a topic first."
            return
        no_llm = answer_mode != "LLM" or not llm_ready
        try:
            filters = Filter.from_text(since, categories, sources or [])
        except RagError as exc:
            yield f"⚠️ Filters: {as_text(str(exc))}"
            return
        yield "_Selecting the papers on this topic…_"
        request = assistant.adjusted(no_llm=no_llm)
        for item in in_background(
            lambda emit: request.summarize(
                topic,
                int(max_papers),
                on_progress=lambda done, total: emit((done, total)),
                filters=filters,
            )
        ):
            if isinstance(item, tuple):
                yield f"_Summarising the papers: {item[0]} of {item[1]} done…_"
            elif isinstance(item, RagError):
                yield f"⚠️ {as_text(str(item))}"
            else:
                yield render_summary(item)

    def summarize_one(
        title: str, answer_mode: str, since: str, categories: str, sources: list[str]
    ) -> str:
        if not (title or "").strip():
            return "Pick or type a paper title first."
        try:
            filters = Filter.from_text(since, categories, sources or [])
            request = assistant.adjusted(no_llm=answer_mode != "LLM" or not llm_ready)
            return render_summary(request.summarize_paper(title, filters=filters))
        except RagError as exc:
            return f"⚠️ {as_text(str(exc))}"

    def chat_api(message: str, history: list | None = None) -> str:
        """Answer `message` (with an optional messages-format history); the answer text, then
        its cited sources by number and title."""
        request = assistant.adjusted(no_llm=not llm_ready)
        try:
            answer, _ = request.chat(message, turns_from_messages(history))
        except RagError as exc:  # the message the chat shows, not Gradio's opaque one
            raise gr.Error(str(exc)) from None
        return api_text(answer)

    def chat_json(message: str, history: list | None = None) -> dict[str, Any]:
        """Answer `message` (with an optional messages-format history); the answer as `rag ask
        --json` gives it: citations, sources, and each claim with its evidence and verdict."""
        request = assistant.adjusted(no_llm=not llm_ready)
        try:
            answer, _ = request.chat(message, turns_from_messages(history))
        except RagError as exc:
            raise gr.Error(str(exc)) from None
        return answer.to_json()

    def search(query: str, k: int = 10) -> str:
        """Search the collection of paper abstracts (dense and BM25, fused per paper).

        Args:
            query: what to look for, in any words.
            k: how many papers to return, 1 to 50.

        Returns:
            JSON: the query and the papers, best first: rank, paper_id, title, score, the best
            matching snippet and the listing dates.
        """
        try:
            papers = assistant.search(query, max(1, min(int(k), 50)))
        except RagError as exc:
            raise gr.Error(str(exc)) from None
        results = [{"rank": i, **p.to_json()} for i, p in enumerate(papers, start=1)]
        return json.dumps({"query": query, "results": results}, ensure_ascii=False)

    def ask(question: str) -> str:
        """Answer a question from the paper abstracts, every claim citing the paper it comes from.

        Args:
            question: the question, in any words.

        Returns:
            JSON (as `rag ask --json`): the answer with [n] citations, the cited papers (n,
            title, url), the sources, and each claim with the passage that supports it and a
            verdict (supported, weak, unsupported, uncited); "does not cover" when no paper
            answers it.
        """
        return json.dumps(chat_json(question), ensure_ascii=False)

    def summarize(topic: str, max_papers: int = 8) -> str:
        """A cited overview of what the collection's papers say about a topic.

        Args:
            topic: the topic, in any words.
            max_papers: the most papers to cover, 2 to 20.

        Returns:
            JSON (as `rag summarize --json`): the overview (each sentence citing [n]), the
            papers it covers with one line each, and the references.
        """
        try:
            request = assistant.adjusted(no_llm=not llm_ready)
            summary = request.summarize(topic, max(2, min(int(max_papers), 20)))
            return json.dumps(summary.to_json(), ensure_ascii=False)
        except RagError as exc:
            raise gr.Error(str(exc)) from None

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\nCited answers over the paper abstracts in the collection.")
        if not llm_ready:
            gr.Markdown(NO_LLM_BANNER, elem_id="no-llm-banner")
        turns = gr.State([])
        answers = gr.State([])  # this conversation's answers, for the downloads
        with gr.Accordion("Filters: which papers may be searched and cited", open=False):
            with gr.Row():
                since = gr.Textbox(
                    label="Since (YYYY-MM-DD)",
                    placeholder="e.g. 2024-01-01",
                    elem_id="filter-since",
                )
                categories = gr.Textbox(
                    label="arXiv categories (any of)",
                    placeholder="e.g. cs.LG cs.CL",
                    elem_id="filter-category",
                )
                source_files = gr.Dropdown(
                    assistant.source_files(),
                    value=[],
                    multiselect=True,
                    label="Source files (any of)",
                    elem_id="filter-source",
                )
        with gr.Tabs():
            with gr.Tab("Chat"):
                with gr.Row():
                    with gr.Column(scale=3):
                        chatbot = gr.Chatbot(
                            label="Chat",
                            height=480,
                            buttons=["copy"],
                            elem_id="chat",
                            placeholder="Ask about the papers in the collection.",
                        )
                        box = gr.Textbox(
                            placeholder="Ask a question and press Enter",
                            show_label=False,
                            elem_id="question",
                            autofocus=True,
                        )
                        with gr.Row():
                            send = gr.Button("Send", variant="primary", elem_id="send")
                            stop = gr.Button("Stop", variant="stop", elem_id="stop")
                            clear = gr.Button("Clear chat", elem_id="clear")
                        with gr.Row():
                            save_md = gr.DownloadButton(
                                "Conversation (Markdown)", elem_id="save-md", size="sm"
                            )
                            save_bib = gr.DownloadButton(
                                "Cited papers (BibTeX)", elem_id="save-bib", size="sm"
                            )
                        suggested = gr.Dataset(
                            components=[box],
                            samples=[],
                            label="Ask next (from the cited papers)",
                            elem_id="follow-ups",
                        )
                        gr.Examples(EXAMPLES, inputs=box, label="Example questions")
                    with gr.Column(scale=2):
                        sources = gr.Markdown(EMPTY_SOURCES, elem_id="sources")
                        with gr.Accordion("Options", open=False):
                            k = gr.Slider(
                                1, 10, value=settings.top_k, step=1, label="Number of sources"
                            )
                            mode = gr.Radio(
                                ["hybrid", "dense", "bm25"],
                                value=settings.retriever,
                                label="Retriever",
                            )
                            answer_mode = gr.Radio(
                                list(MODES),
                                value="LLM" if llm_ready else "Extractive",
                                label="Answer mode",
                                interactive=llm_ready,
                            )
                            model = gr.Textbox(
                                value=settings.llm_model, label="Model name", visible=llm_ready
                            )
            with gr.Tab("Summaries"):
                with gr.Row():
                    with gr.Column(scale=2):
                        topic = gr.Textbox(
                            label="Topic",
                            elem_id="topic",
                            placeholder="e.g. medical image segmentation datasets",
                        )
                        max_papers = gr.Slider(2, 20, value=8, step=1, label="Most papers")
                        topic_button = gr.Button(
                            "Summarise the topic", variant="primary", elem_id="summarize-topic"
                        )
                        picker = gr.Dropdown(
                            assistant.paper_titles(),
                            value=None,  # starts empty: nothing is summarised by chance
                            label="Or one paper (type to search its title)",
                            allow_custom_value=True,
                            filterable=True,
                            elem_id="paper",
                        )
                        paper_button = gr.Button("Summarise the paper", elem_id="summarize-paper")
                    with gr.Column(scale=3):
                        summary = gr.Markdown("", elem_id="summary")
        filter_inputs = [since, categories, source_files]
        inputs = [box, chatbot, turns, answers, k, mode, answer_mode, model, *filter_inputs]
        outputs = [chatbot, sources, box, turns, answers, save_md, save_bib, suggested]
        suggested.click(lambda sample: sample[0], suggested, box, api_visibility="private")
        # Enter while an answer is being written queues the question (the latest one).
        asking = [
            trigger(respond, inputs, outputs, api_visibility="private", trigger_mode="always_last")
            for trigger in (box.submit, send.click)
        ]
        stop.click(None, None, None, cancels=asking, api_visibility="private")
        # Clear and the chat's own trash icon reset the same state, the pending answer too.
        reset = [chatbot, sources, turns, answers, save_md, save_bib, suggested]
        clear.click(fresh, None, reset, cancels=asking, api_visibility="private")
        chatbot.clear(fresh, None, reset, cancels=asking, api_visibility="private")
        topic_inputs = [topic, max_papers, answer_mode, *filter_inputs]
        topic_button.click(summarize_topic, topic_inputs, summary, api_visibility="private")
        topic.submit(summarize_topic, topic_inputs, summary, api_visibility="private")
        paper_button.click(
            summarize_one, [picker, answer_mode, *filter_inputs], summary, api_visibility="private"
        )
        gr.api(chat_api, api_name="chat", concurrency_limit=CONCURRENCY)
        gr.api(chat_json, api_name="chat_json", concurrency_limit=CONCURRENCY)
        for tool in (search, ask, summarize):  # also the MCP tools under `rag serve --mcp`
            gr.api(tool, api_name=tool.__name__, concurrency_limit=CONCURRENCY)
    return app


def launch(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    assistant: Assistant | None = None,
    mcp: bool = False,
) -> gr.Blocks:
    """Serve the app on `host:port` (never a public share link); login when RAG_UI_AUTH is set.
    `mcp`: also serve search, ask and summarize as MCP tools (at /gradio_api/mcp/)."""
    if mcp:
        try:
            import mcp as _  # noqa: F401 - Gradio's MCP server needs it
        except ImportError:
            raise RagError("--mcp needs the mcp package: pip install -e '.[mcp]'") from None
    app = build_app(settings, assistant)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=256)
    auth = settings.ui_credentials()
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        auth=auth,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=True,
        ssr_mode=False,
        theme=gr.themes.Soft(),
        footer_links=["api"],
        mcp_server=mcp,
        css=PHONE_CSS,
    )
    return app
