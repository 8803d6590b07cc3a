"""The baseline: a bare Flask app with the relay's callback route that only parses the body.

Same URL and methods as the relay's ``/callbacks/catapult``, the same parsing (``json.loads``
of the POST body, ``request.args`` for GET), an empty 200; no auth, no database. Served by
gunicorn with the relay's flags, it is what "0.8x bare" is measured against. The two floors
(``journal_app``, ``durable_app``) parse with the same function before their durable write.
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

app = Flask(__name__)


def parse_event() -> str:
    """Parse this request's event like the relay does; return its raw text."""
    if request.method == "GET":
        raw = request.query_string.decode("utf-8", "replace")
        payload = request.args.to_dict()
    else:
        raw = request.get_data(as_text=True)
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
    del payload
    return raw


@app.route("/callbacks/catapult", methods=["GET", "POST"])
def catapult() -> Response:
    """Parse the event, then answer 200 with no body."""
    parse_event()
    return Response(status=200)
