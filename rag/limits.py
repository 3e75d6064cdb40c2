"""Defaults and bounds that `Settings` validates and the CLI's help shows: constants only, so
that `rag --help` does not pay for importing pydantic."""

TOP_K = 5
"""Papers given to the answer step, and returned by a search, unless asked otherwise."""
MAX_RESULTS = 100
"""Papers one search returns at most (`rag search --k`, `RAG_TOP_K`)."""
MAX_SOURCES = 50
"""Papers one answer may be given as sources (`rag ask --k`)."""
EVAL_K = 10
"""Papers retrieved and scored per question by `rag eval`."""
SUMMARY_PAPERS = 8
"""Papers a topic overview covers at most, unless asked otherwise."""
MAX_SUMMARY_PAPERS = 30
"""Most papers one overview may cover (`rag summarize --max-papers`)."""
