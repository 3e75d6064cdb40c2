"""The Gradio chat front-end: a thin shell over `rag.api.Assistant`.

Answers stream token by token; the Sources panel lists the cited papers (title, the sentence
that supports the answer, listing dates, links) and, apart, the papers retrieved but not cited.
The same chat is the API endpoint `/chat` for scripts (`gradio_client`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from rag.api import Assistant
from rag.conversation import Turn
from rag.errors import RagError
from rag.export import cited_bibtex, conversation_markdown
from ui.background import IDLE, Answering, Stop, in_background
from ui.panels import checked_filters, filter_error, filters_panel, upload_panel, wire_filter_checks
from ui.render import (
    as_text,
    chat_message,
    render_sources,
    render_summary,
    streaming_text,
)
from ui.tools import serve_tools

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
NO_ANSWER = "### Sources\n_No answer: see the message in the chat._"
WORKING = "_Searching the collection and writing the answer…_"
STOPPED = "_Stopped before the answer was written._"
MODES = ("LLM", "Extractive")
# On a phone the chat is shorter, so the question box is on the first screen (below the banner).
# The footer's separator that follows nothing is hidden.
CSS = """
@media (max-width: 640px) { #chat { height: 42vh !important; max-height: 42vh; } }
footer > .divider:last-child { display: none; }
button.question { justify-content: flex-start; text-align: left; }
"""
# Chats served at once: most of a chat is waiting on the LLM, so many fit on 2 cores.
CONCURRENCY = 32


# One folder per server for the download files; each answer's files are kept an hour.
EXPORTS = Path(tempfile.gettempdir()) / f"rag-export-{os.getpid()}"
EXPORT_KEPT_S = 3600


def saved(answers: Sequence[Answer]) -> tuple[str | None, str | None]:
    """The conversation as a Markdown file and its cited papers as a BibTeX file, for the
    download buttons (None: nothing to save yet)."""
    if not answers:
        return None, None
    EXPORTS.mkdir(parents=True, exist_ok=True)
    for old in EXPORTS.iterdir():  # Gradio has copied them to its cache long since
        if time.time() - old.stat().st_mtime > EXPORT_KEPT_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=EXPORTS))
    markdown = folder / "conversation.md"
    markdown.write_text(conversation_markdown(answers), encoding="utf-8")
    bib = cited_bibtex(answers)
    if not bib.strip():
        return str(markdown), None
    references = folder / "references.bib"
    references.write_text(bib, encoding="utf-8")
    return str(markdown), str(references)


def build_app(
    settings: Settings, assistant: Assistant | None = None, uploads: bool | None = None
) -> gr.Blocks:
    """The app; `uploads`: offer the "Add papers" tab (default: as on 127.0.0.1)."""
    assistant = assistant or Assistant(settings)
    llm_ready = settings.llm_configured
    if uploads is None:
        uploads = settings.ui_upload_allowed("127.0.0.1")

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
        source_names: list[str],
        stop: Stop,
    ) -> Iterator[dict[Any, Any]]:
        """Each yield updates only the components it names; `stop` is set by Stop or Clear."""
        chat = list(chat or [])
        if not (message or "").strip():
            yield {box: ""}
            return
        try:  # a bad filter is shown next to the filters, not in the chat
            filters = checked_filters(assistant, since, categories, source_names)
        except RagError as exc:
            yield filter_error(filters_ui, str(exc))
            return
        request = assistant.adjusted(
            no_llm=answer_mode != "LLM" or not llm_ready,
            top_k=int(k),
            retriever=mode,
            llm_model=(model or "").strip() or None,
        )
        chat += [{"role": "user", "content": message}, {"role": "assistant", "content": WORKING}]
        # The box is emptied once, now: what is typed while the answer is written stays.
        yield {
            chatbot: chat,
            sources: "### Sources\n_Searching the collection…_",
            box: "",
            **filter_error(filters_ui, None),
        }
        streamed = ""
        for item in in_background(
            lambda emit: request.chat(message, turns, on_token=emit, filters=filters),
            idle=True,
            stop=stop,
        ):
            if item is IDLE:  # nothing new to show
                yield {}
            elif isinstance(item, str):
                streamed += item
                chat[-1] = {"role": "assistant", "content": streaming_text(streamed, int(k))}
                yield {chatbot: chat}
            elif isinstance(item, RagError):
                note = "\n\n_(answer interrupted)_" if streamed else ""
                text = f"{as_text(streamed)}{note}\n\n⚠️ {as_text(str(item))}"
                chat[-1] = {"role": "assistant", "content": text}
                yield {
                    chatbot: chat,
                    sources: "### Sources\n_No answer: see the message in the chat._",
                }
            else:
                answer, turn = item
                chat[-1] = {"role": "assistant", "content": chat_message(answer, len(turns))}
                kept = [*answers, answer]
                md, bib = saved(kept)
                yield {
                    chatbot: chat,
                    sources: render_sources(answer),
                    turns_state: [*turns, turn],
                    answers_state: kept,
                    save_md: md,
                    save_bib: bib,
                    **suggestions([]),
                }
                # Then the questions to ask next (an LLM call of its own when there is one).
                # Stop or Clear end it too: each token passes through `emit`.
                for nexts in in_background(
                    lambda emit: request.follow_ups(answer, lambda _: emit(None)),  # noqa: B023
                    idle=True,
                    stop=stop,
                ):
                    if isinstance(nexts, list):
                        # The files again: Gradio empties a download button that a later
                        # yield of the same event skips.
                        yield {**suggestions(nexts), save_md: md, save_bib: bib}
                    else:  # a token or IDLE: nothing new to show
                        yield {}
                return
        if stop.reason == "stop" and not streamed:  # stopped while searching
            chat[-1] = {"role": "assistant", "content": STOPPED}
            yield {chatbot: chat, sources: EMPTY_SOURCES}

    def suggestions(questions: Sequence[str]) -> dict[Any, Any]:
        """The "Ask next" buttons showing `questions` (hidden when there are none)."""
        shown = {next_label: gr.Markdown(visible=bool(questions))}
        for n, button in enumerate(next_buttons):
            text = questions[n] if n < len(questions) else ""
            shown[button] = gr.Button(value=text, visible=bool(text))
        return shown

    def fresh() -> dict[Any, Any]:
        cleared = {chatbot: [], sources: EMPTY_SOURCES, turns_state: [], answers_state: []}
        return {**cleared, save_md: None, save_bib: None, **suggestions([])}

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
            filters = checked_filters(assistant, since, categories, sources)
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
            filters = checked_filters(assistant, since, categories, sources)
            request = assistant.adjusted(no_llm=answer_mode != "LLM" or not llm_ready)
            return render_summary(request.summarize_paper(title, filters=filters))
        except RagError as exc:
            return f"⚠️ {as_text(str(exc))}"

    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\nCited answers over the paper abstracts in the collection.")
        if not llm_ready:
            gr.Markdown(NO_LLM_BANNER, elem_id="no-llm-banner")
        turns_state = gr.State([])
        live = gr.State(Answering)  # this tab's running answers, for Stop and Clear
        answers_state = gr.State([])  # this conversation's answers, for the downloads
        filters_ui = filters_panel(assistant.collection_facts())
        wire_filter_checks(filters_ui, assistant)
        with gr.Tabs():
            with gr.Tab("Chat"):
                with gr.Row():
                    with gr.Column(scale=3):
                        chatbot = gr.Chatbot(
                            label="Chat",
                            show_label=False,  # the tab says it; a floating label hid messages
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
                        # Buttons, not Gradio's examples, which cut a question at 60 characters.
                        with gr.Column(elem_id="follow-ups"):
                            next_label = gr.Markdown(
                                "**Ask next** (about the cited papers)", visible=False
                            )
                            next_buttons = [
                                gr.Button("", visible=False, size="sm", elem_classes=["question"])
                                for _ in range(3)
                            ]
                        with gr.Column(elem_id="examples"):
                            gr.Markdown("**Example questions**")
                            example_buttons = [
                                gr.Button(q, size="sm", elem_classes=["question"]) for q in EXAMPLES
                            ]
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
            if uploads:
                with gr.Tab("Add papers"):
                    upload_panel(assistant, filters_ui, picker)
        filter_inputs = filters_ui.inputs
        inputs = [box, chatbot, turns_state, answers_state, k, mode, answer_mode, model]
        inputs += [*filter_inputs, live]
        outputs = [chatbot, sources, box, turns_state, answers_state, save_md, save_bib]
        outputs += [next_label, *next_buttons, filters_ui.error, filters_ui.accordion]
        for button in [*next_buttons, *example_buttons]:  # a question into the box
            button.click(lambda text: text, button, box, api_visibility="private")

        def answer(*values: Any) -> Iterator[tuple[Any, ...]]:
            # Every output a yielded dict leaves out is skipped (unchanged).
            *asked, tab = values
            with tab.running() as stop:
                for changes in respond(*asked, stop):
                    yield tuple(changes.get(output, gr.skip()) for output in outputs)

        # Enter while an answer is being written queues the question (the latest one).
        for trigger in (box.submit, send.click):
            trigger(answer, inputs, outputs, api_visibility="private", trigger_mode="always_last")
        # Stop ends this tab's running answers (see Answering), not queued: at once.
        stop.click(lambda tab: tab.stop(), live, None, queue=False, api_visibility="private")
        # Clear and the chat's own trash icon reset the same state, the running answer too.
        reset = [chatbot, sources, turns_state, answers_state, save_md, save_bib]
        reset += [next_label, *next_buttons]
        for cleared in (clear.click, chatbot.clear):
            cleared(
                lambda tab: tab.stop("clear"), live, None, queue=False, api_visibility="private"
            ).then(fresh, None, reset, api_visibility="private")
        topic_inputs = [topic, max_papers, answer_mode, *filter_inputs]
        topic_button.click(summarize_topic, topic_inputs, summary, api_visibility="private")
        topic.submit(summarize_topic, topic_inputs, summary, api_visibility="private")
        paper_button.click(
            summarize_one, [picker, answer_mode, *filter_inputs], summary, api_visibility="private"
        )
        serve_tools(assistant, llm_ready, CONCURRENCY)
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
    uploads = settings.ui_upload_allowed(host)
    if settings.ui_upload and not uploads:
        log.warning("adding papers from the page is off: set RAG_UI_AUTH to allow it on %s", host)
    app = build_app(settings, assistant, uploads)
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
        css=CSS,
    )
    return app
