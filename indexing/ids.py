"""Point ids: deterministic, so indexing the same thing twice updates one point.

The public id of an item is its *key*: the id the caller gave, or "sha256:<hex>" of the
content when none was given. The backend point id is a UUID5 of (collection, key); both
Qdrant backends accept UUID strings, and a UUID cannot collide with a caller's own id
syntax. Nothing here may change once data exists: stored points are addressed by it.
"""

from __future__ import annotations

import uuid

# Derived, not random, so it can be re-created from this line if ever lost.
LOUPE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "loupe:point-id")

CONTENT_KEY_PREFIX = "sha256:"


def content_key(sha256: str) -> str:
    """The public id of an item indexed without a caller-given id."""
    return CONTENT_KEY_PREFIX + sha256.lower()


def item_key(public_id: str | None, sha256: str) -> str:
    """The public id an item is stored under."""
    return public_id if public_id is not None else content_key(sha256)


def point_id(collection: str, key: str) -> str:
    """Backend point id of `key` in `collection`.

    Collection names cannot contain "/" (see `Index`), so the joined string is unambiguous.
    """
    return str(uuid.uuid5(LOUPE_NAMESPACE, f"{collection}/{key}"))
