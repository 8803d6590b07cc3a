"""SMS segment counting by the GSM-7 / UCS-2 rules of catapult-v1.md section 1."""

from __future__ import annotations

# GSM 03.38 default alphabet (the escape character itself is not a user character).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each of these is sent as escape + character, i.e. two septets.
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE, GSM7_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67


def is_gsm7(text: str) -> bool:
    """True when every character fits the GSM-7 default or extension table."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def encoding(text: str) -> str:
    """The encoding a carrier would pick: ``GSM-7`` or ``UCS-2``."""
    return "GSM-7" if is_gsm7(text) else "UCS-2"


def _units(text: str) -> tuple[list[int], int, int]:
    """Per-character size in transport units, and the single/multipart capacities."""
    if is_gsm7(text):
        return [2 if c in GSM7_EXTENSION else 1 for c in text], GSM7_SINGLE, GSM7_MULTI
    # UCS-2 length counts UTF-16 code units: outside the BMP (most emoji) takes two.
    return [2 if ord(c) > 0xFFFF else 1 for c in text], UCS2_SINGLE, UCS2_MULTI


def segment_count(text: str | None, *, mms: bool = False) -> int:
    """Segments the message is sent as; MMS is always one."""
    if mms or not text:
        return 1
    units, single, multi = _units(text)
    if sum(units) <= single:
        return 1
    # Multipart: a two-unit character (escape sequence, surrogate pair) is never split
    # across segments, so it moves whole to the next one when only one unit is left.
    segments, used = 1, 0
    for size in units:
        if used + size > multi:
            segments += 1
            used = 0
        used += size
    return segments
