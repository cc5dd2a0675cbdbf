"""HL7 v2 delimiters: a message written with any encoding characters, re-written with ``|^~\\&``.

A message names its own delimiters in MSH-1 and MSH-2: the field separator, then the component,
repetition, escape and subcomponent characters, and from HL7 v2.7 on a fifth, the truncation
character (``|^~\\&#``). Nearly every RIS sends ``|^~\\&``; one that sends others (or v2.7's
truncation character) is read by re-writing its message with the standard delimiters first, so
that everything after (the order book, the ORU filed under it) sees one encoding, and the answer
goes back in the sender's own (``recode(ack, STANDARD, sender)``), as HL7's acknowledgement rules
expect. Escape sequences are kept: ``\\F\\``, ``\\S\\``, ``\\R\\``, ``\\E\\``, ``\\T\\`` and
``\\P\\`` stand for a delimiter of the message they are in, so they are re-written for the
delimiters of the other side (a literal ``^`` in a message whose component separator is ``$``
becomes ``\\S\\``); formatting and hex sequences (``\\H\\``, ``\\X0D\\``, ``\\.br\\``) are copied
with the other side's escape character. A truncation character has no counterpart in an encoding
without one: it is written as a literal character there (escaped if that is a delimiter).
"""

from __future__ import annotations

import re

STANDARD = "|^~\\&"  # MSH-1 and MSH-2 as nearly every system writes them
ROLES = "FSRETP"  # the escape sequence of each delimiter in STANDARD's order (P: truncation, v2.7)
SEGMENT_HEADERS = ("MSH", "BHS", "FHS")  # segments whose first fields are the delimiters themselves


def delimiters(text: str) -> str:
    """MSH-1 and MSH-2 of the message ``text`` (ER7, segments ended by CR): ``"|^~\\&"`` or, with
    v2.7's truncation character, ``"|^~\\&#"``.

    Raises:
        ValueError: no MSH segment first, or delimiters HL7 does not allow (not four or five
            encoding characters, a character used twice, a letter, digit, space or line end).
    """
    if not text.startswith("MSH"):
        raise ValueError("the message does not start with an MSH segment")
    if len(text) < 5 or text[3] in "\r\n":
        raise ValueError("MSH-1 and MSH-2, the message's delimiters, are missing")
    end = text.find(text[3], 4)
    chars = text[3 : end if end > 0 else len(text.split("\r")[0])]
    if len(chars) not in (5, 6):
        raise ValueError(f"MSH-2 holds {len(chars) - 1} encoding characters (HL7 wants 4, or 5 from v2.7)")
    if len(set(chars)) != len(chars) or any(c.isalnum() or c.isspace() for c in chars):
        raise ValueError("MSH-1 and MSH-2 must be distinct characters, none a letter, digit, space or line end")
    return chars


def header_only(text: str) -> str:
    """The MSH segment of ``text`` alone, in the standard delimiters, for a message whose own
    delimiters ``delimiters`` refuses: enough to answer it (its fields split on MSH-1 where that is
    a usable separator, each value stripped of the standard delimiters). "" without an MSH."""
    first = text.split("\r")[0]
    if not first.startswith("MSH") or len(first) < 4 or first[3].isalnum() or first[3].isspace():
        return ""
    fields = (["MSH", first[3], *first[4:].split(first[3])] + [""] * 12)[:13]  # fields[k] is MSH-k
    values = ["".join(c for c in v if c not in STANDARD) for v in fields[3:13]]
    kind = [part for part in re.split(r"[^A-Za-z0-9_]+", fields[9]) if part]  # MSH-9: ORM^O01
    values[6] = "^".join(kind + [""] * (2 - len(kind)))
    return "MSH" + STANDARD + "|" + "|".join(values) + "\r"


def recode(text: str, source: str, target: str = STANDARD) -> str:
    """The message ``text``, written with delimiters ``source`` (``delimiters(text)``), re-written
    with ``target``; its values mean the same afterwards (``python-hl7``'s ``unescape`` gives the
    same strings)."""
    if source == target:
        return text
    segments = []
    for segment in text.split("\r"):
        if segment[:3] in SEGMENT_HEADERS and segment[3:4] == source[0]:
            head, rest = segment[:3] + target, segment[3 + len(source) :]
            segments.append(head + _recode_values(rest, source, target))
        else:
            segments.append(_recode_values(segment, source, target))
    return "\r".join(segments)


def _recode_values(text: str, source: str, target: str) -> str:
    escape, out, i = source[3], [], 0
    while i < len(text):
        c = text[i]
        if c == escape:
            end = text.find(escape, i + 1)
            if end < 0:  # an escape character never closed: taken as itself
                out.append(_literal(c, target))
                i += 1
                continue
            name = text[i + 1 : end]
            role = ROLES.find(name) if len(name) == 1 else -1
            if 0 <= role < len(source):  # a delimiter of the source, written as text
                out.append(_literal(source[role], target))
            else:  # formatting, hex, a site's own (Z...): the same sequence, the target's escape character
                out.append(target[3] + name + target[3])
            i = end + 1
            continue
        role = source.find(c)
        if role >= 0:  # a delimiter: the target's own, or a truncation as a character
            out.append(target[role] if role < len(target) else _literal(c, target))
        else:
            out.append(_literal(c, target))
        i += 1
    return "".join(out)


def _literal(c: str, target: str) -> str:
    """The character ``c`` as text in a message with delimiters ``target``."""
    role = target.find(c)
    return c if role < 0 else target[3] + ROLES[role] + target[3]
