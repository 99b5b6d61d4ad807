"""Personal data a caller may not see: masked in what it gets back and in what it searches with.

A client with the `personal_data` right (or `admin`; the open and shared-key modes are admin)
sees stored text as it is stored. Everyone else gets the kinds of the collection's
`shown_masked` rule (indexing.privacy) masked in the text of SearchText / SearchImage hits and
of GetItem, and masked in a SearchText query before it is embedded or matched by keyword, so
an e-mail address cannot be used to find the receipt that holds it. The thumbnail of an item
whose text holds such data is not sent to them either: the picture would show what the text
hides (indexing.Index also stores no thumbnail at all where `stored_masked` removed something,
and keeps personal data out of the keyword index, so fragments of a value find nothing). Ask
applies the same right inside its pipeline (retrieved items' values are restorable only for
such a caller).
"""

from __future__ import annotations

from typing import Any

from indexing.privacy import Privacy
from services.gateway.clients import Client
from services.gateway.gate import collection_of

RIGHT = "personal_data"


def sees_personal_data(client: Client | None) -> bool:
    return client is not None and client.may(RIGHT)


def redact_request(privacy: Privacy, client: Client, rpc: str, request: Any) -> None:
    """Mask what a caller without the right searches or filters with: the SearchText query, and
    the string values of its filter conditions (a filter `owner_email = <a guess>` would
    otherwise tell whether the guess is stored)."""
    if sees_personal_data(client):
        return
    name = collection_of(rpc, request)
    if name is None:
        return
    if rpc == "SearchText":
        request.query = privacy.shown(name, request.query)
    conditions = _filter_of(rpc, request)
    for condition in conditions.must if conditions is not None else ():
        kind = condition.WhichOneof("match")
        values = [condition.equals] if kind == "equals" else condition.any_of.values if kind == "any_of" else []
        for value in values:
            if value.WhichOneof("kind") == "string_value":
                value.string_value = privacy.shown(name, value.string_value)


def _filter_of(rpc: str, request: Any) -> Any:
    if rpc in ("SearchText", "SearchImage"):
        return request.options.filter
    if rpc in ("Count", "Delete") and (rpc == "Count" or request.WhichOneof("selector") == "filter"):
        return request.filter
    if rpc == "Ask":
        return request.retrieval.filter
    return None


def redact_response(privacy: Privacy, client: Client, rpc: str, request: Any, response: Any) -> Any:
    if response is None or sees_personal_data(client):
        return response
    if rpc in ("SearchText", "SearchImage"):
        name = collection_of(rpc, request)
        for hit in response.hits:
            _mask_item(privacy, name, hit.item)
    elif rpc == "GetItem":
        _mask_item(privacy, collection_of(rpc, request), response)
    elif rpc == "Ask" and (name := collection_of(rpc, request)) is not None:
        for cited in response.cited:
            cited.source = privacy.shown(name, cited.source)
    return response


def _mask_item(privacy: Privacy, collection: str, item: Any) -> None:
    """Text, sources and metadata values as the caller may see them; no thumbnail of an item
    whose text it sees masked (the picture would show what the text hides)."""
    shown = privacy.shown(collection, item.text)
    if shown != item.text:
        item.text = shown
        item.ClearField("thumbnail")
    item.sources[:] = [privacy.shown(collection, source) for source in item.sources]
    _mask_struct(privacy, collection, item.metadata)


def _mask_struct(privacy: Privacy, collection: str, struct: Any) -> None:
    for value in struct.fields.values():
        _mask_value(privacy, collection, value)


def _mask_value(privacy: Privacy, collection: str, value: Any) -> None:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        value.string_value = privacy.shown(collection, value.string_value)
    elif kind == "list_value":
        for item in value.list_value.values:
            _mask_value(privacy, collection, item)
    elif kind == "struct_value":
        _mask_struct(privacy, collection, value.struct_value)
