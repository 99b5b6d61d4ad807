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
    if rpc == "SearchText" and not sees_personal_data(client):
        request.query = privacy.shown(collection_of(rpc, request), request.query)


def redact_response(privacy: Privacy, client: Client, rpc: str, request: Any, response: Any) -> Any:
    if response is None or sees_personal_data(client):
        return response
    if rpc in ("SearchText", "SearchImage"):
        name = collection_of(rpc, request)
        for hit in response.hits:
            _mask_item(privacy, name, hit.item)
    elif rpc == "GetItem":
        _mask_item(privacy, collection_of(rpc, request), response)
    return response


def _mask_item(privacy: Privacy, collection: str, item: Any) -> None:
    shown = privacy.shown(collection, item.text)
    if shown != item.text:
        item.text = shown
        item.ClearField("thumbnail")
