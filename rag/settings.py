"""The one settings object. Nothing else in the project reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag import limits

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "all-MiniLM-L6-v2"


CONTEXT_HELP = (
    "The model's context window in tokens: prompts are shrunk to fit it (fewer sources, then "
    "shorter ones, less history). A server that says its limit ('maximum context length is N') "
    "is believed for the rest of the process."
)


def budget(default: int, least: int, what: str) -> Any:
    """A token budget of one kind of LLM call: the request's `max_tokens`."""
    return Field(default=default, ge=least, description=f"Most tokens of {what} (max_tokens).")


class Settings(BaseSettings):
    """Settings from `RAG_*` environment variables, a `.env` file, or keyword arguments.

    `OPENAI_API_KEY` and `OPENAI_BASE_URL` keep their standard names.
    """

    model_config = SettingsConfigDict(
        env_prefix="RAG_",
        env_file=".env",
        extra="forbid",
        populate_by_name=True,
    )

    # --- storage -------------------------------------------------------------------------
    index_dir: Path = Field(
        default=PROJECT_ROOT / "index" / "store",
        description="Directory of the persisted Chroma store and the index's side files.",
    )
    corpus_dir: Path = Field(
        default=PROJECT_ROOT / "index" / "corpus",
        description="The bundled corpus: `rag ingest` with no path reads every file here.",
    )
    collection: str = Field(default="papers", description="Name of the Chroma collection.")
    chroma_host: str | None = Field(
        default=None,
        description=(
            "Host of a Chroma server (`chroma run`): when set, every command uses that server "
            "instead of the embedded store under index_dir (which then keeps only side files: "
            "the BM25 cache and the ingest lock)."
        ),
    )
    chroma_port: int = Field(default=8000, ge=1, le=65535, description="Port of the server.")
    chroma_auth_token: SecretStr | None = Field(
        default=None, description="Token for a Chroma server that requires one."
    )
    chroma_ssl: bool = Field(default=False, description="Reach the Chroma server over HTTPS.")

    # --- embeddings and chunking -----------------------------------------------------------
    embed_model: str = Field(
        default=DEFAULT_MODEL,
        description=(
            f"Embedding model. '{DEFAULT_MODEL}' is the bundled offline MiniLM; "
            "'openai:NAME' uses the OpenAI embeddings API; "
            "'sentence-transformers:PATH' loads a local sentence-transformers model; "
            "'hash:384' is no model (vectors seeded by a hash of the text), for benchmarks."
        ),
    )
    embed_batch_size: int = Field(default=8, ge=1, description="Texts per embedding batch.")
    embed_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description=(
            "Where the bundled MiniLM runs: cuda (a GPU through torch, documents and queries in "
            "float16, large batches), cpu, or auto: cuda when torch sees a GPU, else cpu."
        ),
    )
    embed_cache: bool = Field(
        default=True,
        description=(
            "Keep embeddings from the OpenAI API in <index_dir>/embedding-cache/, keyed by a hash "
            "of model and text, so no text is paid for twice (a new collection, a rebuilt store, "
            "a re-run after a failure)."
        ),
    )
    embed_backend: Literal["onnx", "numpy"] = Field(
        default="onnx",
        description=(
            "How the bundled MiniLM runs: onnx (ONNX Runtime, about 3x faster) or numpy (the "
            "reference implementation); both give the same vectors."
        ),
    )
    embed_document_precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        default="auto",
        description=(
            "Arithmetic of the bundled MiniLM for texts going into the index (queries and answer "
            "evidence always use float32). bfloat16: through torch, on CPUs with native "
            "bfloat16 (AVX512-BF16 or AMX), the encoder 1.5x to 1.7x faster (ingest 1.3x), "
            "vectors within cosine 0.9999 of float32; int8: the int8-quantised ONNX graph, "
            "ingest 1.6x faster on CPUs with VNNI, vectors within cosine 0.99 (on the dev "
            "questions one multi-paper question lost a paper from its top 5); auto: bfloat16 "
            "where the CPU has it natively and torch is installed, else float32."
        ),
    )
    chunk_tokens: int = Field(
        default=256,
        ge=32,
        description="Largest chunk, in the embedding model's word pieces, title included.",
    )
    chunk_overlap: int = Field(
        default=32, ge=0, description="Word pieces shared by consecutive chunks of one abstract."
    )

    # --- retrieval -------------------------------------------------------------------------
    retriever: Literal["dense", "bm25", "hybrid"] = Field(
        default="hybrid",
        description="dense (Chroma), bm25 (lexical) or hybrid (both, fused per paper).",
    )
    fusion: Literal["convex", "rrf"] = Field(
        default="convex",
        description=(
            "How hybrid fuses the two sides: convex (weighted sum of max-normalised scores; "
            "best on the dev questions and on BEIR SciFact) or rrf (reciprocal rank fusion)."
        ),
    )
    dense_weight: float = Field(
        default=0.6, ge=0, description="Weight of the dense side in fusion."
    )
    bm25_weight: float = Field(
        default=0.5,
        ge=0,
        description=(
            "Weight of the BM25 side in fusion, at full lexical match; a query whose best BM25 "
            "paper matches little of it (a question in other words than the papers') gives the "
            "BM25 side less."
        ),
    )
    top_k: int = Field(
        default=limits.TOP_K,
        ge=1,
        le=limits.MAX_RESULTS,
        description="Papers given to the answer step (and returned by a search).",
    )
    exact_search_max: int = Field(
        default=50_000,
        ge=0,
        description=(
            "Collections of up to this many chunks are searched exactly, from an in-memory copy "
            "of their vectors (deterministic, and faster than the ANN index at this size); "
            "larger embedded ones exactly too, from the vectors the BM25 segments keep "
            "memory-mapped (no HNSW index to load per process); a Chroma server's through its "
            "HNSW index."
        ),
    )
    min_relevance: float = Field(
        default=0.40,
        description=(
            "Refusal threshold: when no passage (a sentence or two adjacent ones) of the retrieved "
            "abstracts reaches this cosine similarity to the question, the collection is judged "
            "not to cover it and the LLM is not called (calibrated for all-MiniLM-L6-v2 on "
            "questions in the abstracts' words and in other words: bench/README.md; recalibrate "
            "for another model)."
        ),
    )
    confident_relevance: float = Field(
        default=0.50,
        description=(
            "Between min_relevance and this, the collection may or may not cover the question "
            "(a question in other words than the papers' often lands here): the LLM gets the "
            "sources and its 'does not cover' reply decides; without an LLM the question is "
            "refused, the closest passages listed for the reader."
        ),
    )

    # --- LLM -------------------------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        description="API key of the OpenAI-compatible endpoint.",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
        description="Base URL of an OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp...).",
    )
    llm_model: str = Field(default="gpt-4o-mini", description="Chat model name.")
    llm_temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    llm_timeout: float = Field(
        default=60.0, gt=0, description="Seconds allowed for one answer, retries included."
    )
    llm_max_retries: int = Field(
        default=3, ge=0, description="Retries of a failed LLM request (429, 5xx, connection)."
    )
    llm_context_tokens: int = Field(default=8192, ge=512, description=CONTEXT_HELP)
    answer_tokens: int = budget(600, 16, "an answer")
    rewrite_tokens: int = budget(80, 8, "a follow-up rewritten as a standalone question")
    follow_up_tokens: int = budget(120, 16, "the follow-up questions suggested under an answer")
    summary_map_tokens: int = budget(160, 16, "one paper's line in a topic summary")
    summary_reduce_tokens: int = budget(900, 32, "a topic summary's overview")
    paper_summary_tokens: int = budget(600, 32, "a one-paper summary")
    verify_tokens: int = budget(300, 16, "the LLM judge's verdicts (RAG_VERIFY=llm)")

    source_chars: int = Field(
        default=6000,
        ge=500,
        description=(
            "Most characters of one paper's text given to the LLM (real abstracts: under "
            "3,000); a longer text is cut, with a note saying so in the prompt."
        ),
    )
    verify: Literal["local", "llm"] = Field(
        default="local",
        description=(
            "How each claim of an answer is checked against the sources it cites: local (MiniLM "
            "similarity, content-word overlap and numbers, no extra call) or llm (also one LLM "
            "call per answer that judges every cited quote; needs an LLM)."
        ),
    )
    citation_repair: bool = Field(
        default=True,
        description=(
            "Re-cite a claim whose cited source does not support it (or that cites nothing) to "
            "another retrieved source that clearly does; reported as a repair. Never invents a "
            "source."
        ),
    )
    summary_min_relevance: float = Field(
        default=0.45,
        description=(
            "Summaries keep a retrieved paper only when one of its sentences reaches this cosine "
            "similarity to the topic (and is within 0.2 of the best paper)."
        ),
    )
    llm_concurrency: int = Field(
        default=8, ge=1, le=64, description="LLM calls at once (the map step of summaries)."
    )

    # --- UI ----------------------------------------------------------------------------------
    ui_max_titles: int = Field(
        default=5000,
        ge=0,
        description=(
            "Most paper titles the UI's paper picker lists; a collection of more than four times "
            "as many chunks lists none (type a title instead)."
        ),
    )
    ui_scan_max_chunks: int = Field(
        default=200_000,
        ge=0,
        description=(
            "The UI lists the collection's source files (for the source filter) by reading every "
            "chunk's metadata: only for collections of up to this many chunks."
        ),
    )
    ui_auth: SecretStr | None = Field(
        default=None,
        description="Login for the web UI as user:password (unset: no login; the UI binds to "
        "127.0.0.1 unless `rag serve --host` says otherwise).",
    )

    ui_upload: bool = Field(
        default=True,
        description=(
            "Whether the web UI lets people add papers (upload JSON Lines, CSV or listing "
            "files). Even when true, never on a host other than 127.0.0.1 without RAG_UI_AUTH "
            "(anyone could fill the index)."
        ),
    )

    @field_validator("openai_base_url", "chroma_host", "chroma_auth_token")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value if value.get_secret_value() else None
        return value or None

    @field_validator("ui_auth")
    @classmethod
    def _user_colon_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        user, sep, password = value.get_secret_value().partition(":")
        if not (user and sep and password):
            raise ValueError("expected user:password")
        return value

    def chroma_url(self) -> str:
        return f"{'https' if self.chroma_ssl else 'http'}://{self.chroma_host}:{self.chroma_port}"

    def ui_credentials(self) -> tuple[str, str] | None:
        if self.ui_auth is None:
            return None
        user, _, password = self.ui_auth.get_secret_value().partition(":")
        return user, password

    def ui_upload_allowed(self, host: str) -> bool:
        """Whether the UI served on `host` offers uploads: not when off, and not on a shared
        host without a login."""
        loopback = host in ("127.0.0.1", "localhost", "::1")
        return self.ui_upload and (loopback or self.ui_auth is not None)

    @property
    def llm_configured(self) -> bool:
        """True when an LLM endpoint is configured (a key, or a local server's base URL)."""
        key = self.openai_api_key.get_secret_value() if self.openai_api_key else ""
        return bool(key or self.openai_base_url)
