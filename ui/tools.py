"""What the app serves to scripts and agents: `/chat` and `/chat_json` (the chat without its
page), and the tools `search`, `ask` and `summarize` (also MCP tools under `rag serve --mcp`,
their docstrings the tool descriptions)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import gradio as gr

from rag.api import Assistant
from rag.conversation import Turn
from rag.errors import RagError
from ui.render import api_text


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


def serve_tools(assistant: Assistant, llm_ready: bool, concurrency: int) -> None:
    """Register the API endpoints and tools on the app being built (inside its `Blocks`)."""

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

    gr.api(chat_api, api_name="chat", concurrency_limit=concurrency)
    gr.api(chat_json, api_name="chat_json", concurrency_limit=concurrency)
    for tool in (search, ask, summarize):  # also the MCP tools under `rag serve --mcp`
        gr.api(tool, api_name=tool.__name__, concurrency_limit=concurrency)
