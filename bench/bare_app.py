"""The baseline: a bare Flask app with the relay's callback route that only parses the body.

Same URL and methods as the relay's ``/callbacks/catapult``, the same parsing (``json.loads``
of the POST body, ``request.args`` for GET), an empty 200; no auth, no database. Served by
gunicorn with the relay's flags, it is what "0.8x bare" is measured against.
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

app = Flask(__name__)


@app.route("/callbacks/catapult", methods=["GET", "POST"])
def catapult() -> Response:
    """Parse the event like the relay does, then answer 200 with no body."""
    if request.method == "GET":
        payload = request.args.to_dict()
    else:
        try:
            payload = json.loads(request.get_data(as_text=True))
        except ValueError:
            payload = None
    del payload
    return Response(status=200)
