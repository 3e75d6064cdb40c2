"""A retrieval-augmented literature assistant over research-paper abstracts.

The entry layer lives in `rag.api` (`ingest`, `search`, `ask`); importing this package stays
cheap so that `rag --help` is instant.
"""

__version__ = "0.1.0"
