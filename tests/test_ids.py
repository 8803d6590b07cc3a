"""Relay ids: ``rm-`` + 26 sortable characters, monotonic, never the carrier's ``m-``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.ids import id_floor, is_carrier_id, new_id


def test_ids_sort_by_creation_even_within_one_millisecond():
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("rm-") and len(i) == 29 for i in ids)
    assert not any(is_carrier_id(i) for i in ids)
    assert is_carrier_id("m-dr4mcch2wfb6frcls677glq")


def test_id_floor_bounds_the_ids_of_a_moment():
    before = id_floor(datetime.now(UTC) - timedelta(milliseconds=5))
    made = new_id()
    after = id_floor(datetime.now(UTC) + timedelta(milliseconds=5))
    assert before < made < after
