"""The journal floor: the bare endpoint plus the cheapest durable write this disk allows.

The same route and parsing as ``bare_app``; then the raw event is written into a journal file
of the worker's own, preallocated with zeros when the worker starts (so a write changes no
file size and no extent: ``fdatasync`` has only the data block to flush), and ``fdatasync``
returns before the 200. No database, no index, no lock shared between workers. Whatever stores
a callback durably on this machine costs at least this much, so it bounds from above what any
durable callback endpoint can reach against the bare one.
"""

from __future__ import annotations

import os

from flask import Flask, Response, request

from .bare_app import parse_event

app = Flask(__name__)
FOLDER = os.environ.get("JOURNAL_FLOOR_FOLDER", ".")
SIZE = 64 * 1024 * 1024  # bytes per worker; records wrap around at the end
BLOCK = 4096
_local: dict = {}


def _journal() -> dict:
    """This worker's journal, created and filled with zeros after the fork."""
    if _local.get("pid") != os.getpid():
        path = os.path.join(FOLDER, f"journal-floor.{os.getpid()}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        zeros = bytes(1024 * 1024)
        for _ in range(SIZE // len(zeros)):
            os.write(fd, zeros)
        os.fsync(fd)
        _local.update(pid=os.getpid(), fd=fd, offset=0)
    return _local


@app.route("/callbacks/catapult", methods=["GET", "POST"])
def catapult() -> Response:
    """Parse the event like the relay does, write it to the journal, fdatasync, answer 200."""
    raw = parse_event()
    journal = _journal()
    record = f"{request.method}\t{raw}\n".encode()
    if journal["offset"] + len(record) > SIZE:
        journal["offset"] = 0
    os.pwrite(journal["fd"], record, journal["offset"])
    os.fdatasync(journal["fd"])
    # The next record starts on a fresh block, as a log with checksummed blocks would.
    journal["offset"] += -(-len(record) // BLOCK) * BLOCK
    return Response(status=200)
