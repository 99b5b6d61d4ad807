"""Domain errors shared by every layer.

They live in `encoders` because it is the bottom of the import graph (`indexing` and
`services` may import it; it imports neither). `services.rpc.errors` maps each class to a gRPC
status code in one table; nothing else decides status codes.
"""

from __future__ import annotations


class LoupeError(Exception):
    """Base for errors a client may see. `reason` is a sentence a human can act on."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # The request field at fault (e.g. "items[3].data", "filter.must[0].field"), if any.
        self.field = field


class InvalidInput(LoupeError):
    """The request itself is wrong: bad bytes, a bad filter, a limit out of range."""


class BatchInvalid(InvalidInput):
    """Several items of one request are invalid; nothing from the request was stored."""

    def __init__(self, problems: list[InvalidInput]) -> None:
        first = problems[0]
        summary = f"{len(problems)} item(s) rejected, nothing stored; first: {first.field}: {first.reason}"
        super().__init__(summary, field=first.field)
        self.problems = problems


class NotFound(LoupeError):
    """An id or collection that does not exist.

    `existing`: for a missing collection, the collections there are (named in the reason);
    the gateway shows a client only those it may use (`shown_to`)."""

    def __init__(self, reason: str, *, field: str | None = None, existing: tuple[str, ...] | None = None) -> None:
        self.missing = reason
        self.existing = existing
        if existing is not None:
            reason = f"{reason}; existing collections: {', '.join(repr(n) for n in existing) or 'none yet'}"
        super().__init__(reason, field=field)

    def shown_to(self, visible) -> NotFound:
        """The same error naming only the collections `visible(name)` allows."""
        if self.existing is None:
            return self
        return NotFound(self.missing, field=self.field, existing=tuple(n for n in self.existing if visible(n)))


class AlreadyExists(LoupeError):
    """Something that may be given once was given again (e.g. a second rating of one call)."""


class ModelMismatch(LoupeError):
    """A collection was built by a different model than the one serving the request."""


class VectorStateConflict(LoupeError):
    """An operation on a collection's vectors that their state does not allow yet: switching
    to, or marking complete, a vector some points still lack; dropping the active vector;
    adding a second vector for a model that has one. The reason says what to do first."""


class ModelUnavailable(LoupeError):
    """Model weights cannot be found or loaded. The reason lists the ways to supply them."""


class Overloaded(LoupeError):
    """Too much work in flight; the client should retry after `retry_after_s`."""

    def __init__(self, reason: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class TimedOut(LoupeError):
    """A call ran past the server's bound (`grpc.request_timeout_s`) or the caller's deadline."""


class StoreUnavailable(LoupeError):
    """The vector store (embedded shard or Qdrant server) cannot be reached or opened."""


class Unauthenticated(LoupeError):
    """No API key, or one that no client holds (or that has expired)."""


class Forbidden(LoupeError):
    """A known client asked for something outside its rights or its collections."""
