"""The callback journal: where a callback waits, durably, while the database cannot take it.

``store.Journal`` is the log (a local SQLite file in ``JOURNAL_DIR``, one per host, shared by
every process on it); ``replay.Replayer`` applies its entries to the database through the
same receive path as a live callback, in arrival order and exactly once, as soon as the
database answers again.
"""

from .replay import Replayer
from .store import Journal, JournalError

__all__ = ["Journal", "JournalError", "Replayer"]
