"""segmentCount by the GSM-7 / UCS-2 rules of catapult-v1.md section 1."""

from __future__ import annotations

import pytest

from app.sandbox.segments import encoding, segment_count

EMOJI = "\U0001f600"  # outside the BMP: two UTF-16 code units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", 1),
        ("a" * 160, 1),  # single GSM-7 segment holds 160
        ("a" * 161, 2),  # then 153 per part
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¡ÄÖÑÜ§¿äöñüà" * 3, 1),  # GSM-7 basic, not UCS-2
        ("ж" * 70, 1),  # single UCS-2 segment holds 70
        ("ж" * 71, 2),  # then 67 per part
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("a" * 159 + "ж", 3),  # one UCS-2 character turns the whole message into UCS-2
        (EMOJI * 35, 1),  # 70 code units
        (EMOJI * 36, 2),  # 72 code units
        ("a" * 69 + EMOJI, 2),  # 71 code units
        ("a" * 68 + EMOJI, 1),  # 70 code units
        ("€" * 80, 1),  # extension characters take two septets: 160
        ("€" * 81, 2),  # 162
        ("a" * 158 + "€", 1),  # 160 septets
        ("a" * 159 + "€", 2),  # 161 septets
        ("^{}\\[~]|" * 10, 1),  # 8 extension characters x 10 = 160 septets
        ("^{}\\[~]|" * 10 + "a", 2),
        # An escape sequence is never split across parts: 152 + 2 does not fit in 153.
        ("a" * 152 + "€" + "a" * 152, 3),
    ],
)
def test_sms_segment_count(text: str, expected: int) -> None:
    assert segment_count(text) == expected


def test_mms_is_always_one_segment() -> None:
    assert segment_count("a" * 2000, mms=True) == 1
    assert segment_count(None, mms=True) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("plain [text] €", "GSM-7"), ("emoji " + EMOJI, "UCS-2"), ("Привет", "UCS-2")],
)
def test_encoding(text: str, expected: str) -> None:
    assert encoding(text) == expected
