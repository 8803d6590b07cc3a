"""Drives the python ``bandwidth-sdk`` 3.x v1 client (``bandwidth.messaging``) for the tests.

stdin: ``{"client": {user_id, api_token, api_secret, api_endpoint}, "steps": [{op, args}]}``;
stdout: one JSON array, a result per step: ``{"ok": true, "value": ..., "calls": [...]}`` or
``{"ok": false, "error": {name, status_code, code, message}, "calls": [...]}``. ``calls`` lists
the HTTP requests the client made for that step (method, URL, query), read off ``requests``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import requests
from bandwidth.messaging import BandwidthMessageAPIException, Client

MAX_ITEMS = 1000
CALLS: list[dict[str, Any]] = []
_request = requests.request


def recording_request(method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
    """``requests.request`` that notes what the SDK asked for, then does it unchanged."""
    CALLS.append({"method": method.upper(), "url": url, "params": kwargs.get("params")})
    return _request(method, url, *args, **kwargs)


requests.request = recording_request  # the SDK calls requests.request for every request


def list_messages(client: Client, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item of the SDK's lazy list (it fetches ``Link rel="next"`` URLs verbatim)."""
    items = []
    for item in client.list_messages(**args):
        items.append(item)
        if len(items) >= MAX_ITEMS:
            break
    return items


def send_and_get(client: Client, args: dict[str, Any]) -> dict[str, Any]:
    """Send, then GET the message at once (as the Ruby and Java SDKs do)."""
    message_id = client.send_message(**args)
    return {"id": message_id, "got": client.get_message(message_id)}


OPS = {
    "send_message": lambda client, args: client.send_message(**args),
    "send_messages": lambda client, args: client.send_messages(args),
    "get_message": lambda client, args: client.get_message(args),
    "send_and_get": send_and_get,
    "list_messages": list_messages,
}


def describe(error: Exception) -> dict[str, Any]:
    """The exception as the SDK raised it."""
    if isinstance(error, BandwidthMessageAPIException):
        return {
            "name": type(error).__name__,
            "status_code": error.status_code,
            "code": error.code,
            "message": error.message,
        }
    return {"name": type(error).__name__, "message": str(error)}


def main() -> None:
    """Run the steps, print the results."""
    request = json.load(sys.stdin)
    client = Client(**request["client"])
    results = []
    for step in request["steps"]:
        CALLS.clear()
        try:
            value = OPS[step["op"]](client, step.get("args"))
            results.append({"ok": True, "value": value, "calls": list(CALLS)})
        except Exception as error:  # every failure is a result to assert on
            results.append({"ok": False, "error": describe(error), "calls": list(CALLS)})
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
