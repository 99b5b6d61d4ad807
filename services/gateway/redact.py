"""Personal data a caller may not see: masked in what it gets back and in what it searches with.

A client with the `personal_data` right (or `admin`; the open and shared-key modes are admin)
sees stored text as it is stored. Everyone else gets the kinds of the collection's
`shown_masked` rule (indexing.privacy) masked in the text of SearchText / SearchImage hits and
of GetItem, and masked in a SearchText query before it is embedded or matched by keyword, so
an e-mail address cannot be used to find the receipt that holds it. Ask applies the same right
inside its pipeline (retrieved items' values are restorable only for such a caller).
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
            hit.item.text = privacy.shown(name, hit.item.text)
    elif rpc == "GetItem":
        response.text = privacy.shown(collection_of(rpc, request), response.text)
    return response
