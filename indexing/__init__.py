"""Vector storage for Loupe: one `VectorStore` interface, two backends, `Index` on top.

Backends are imported on demand: the embedded one loads a native library, the server one
pulls in qdrant-client, and most callers need only one of them.
"""

from __future__ import annotations

from indexing.types import VectorStore


def open_store(*, data_dir: str | None = None, url: str | None = None, api_key: str | None = None) -> VectorStore:
    """A Qdrant server store if `url` is given, else the embedded Edge store in `data_dir`.

    Raises StoreUnavailable if the store cannot be opened (folder in use, bad path); a
    server is contacted lazily, so an unreachable URL surfaces on first use.
    """
    if url:
        from indexing.store.qdrant import QdrantStore

        return QdrantStore(url=url, api_key=api_key)
    if not data_dir:
        raise ValueError("open_store needs a url (Qdrant server) or a data_dir (embedded store)")
    from indexing.store.edge import EdgeStore

    return EdgeStore(data_dir)
