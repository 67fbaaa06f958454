"""The queue's segment files: line protocol in frames that check themselves, point by point.

A segment is line protocol InfluxDB can take as it is. Each append is one *frame*: a comment
line (InfluxDB ignores lines that start with ``#``), then the points' lines::

    #q <seq> <queued> <before> <crc>,<crc>,... <database>
    <line>            (one per CRC; a line never starts with "#" nor holds a line break)

- ``seq``: the first point's sequence number; the frame holds ``seq .. seq + n - 1``.
- ``queued``: UNIX seconds when it was appended.
- ``before``: CRC-32 of every byte of the segment before this frame. The values chain: one
  ``crc32`` over a run of frames, seeded with the first one's ``before``, gives the ``before``
  of the frame after the run, so a whole batch is checked in one call.
- one CRC-32 per line, over the line and its sequence number, time and database: a damaged
  byte costs the point it falls in (a damaged frame line costs its frame).

A sealed segment ends in a trailer ``#z <first> <next> <points> <oldest> <before> <crc> <dbs>``
(databases joined by ``/``, which InfluxDB forbids in a name), so start-up and ``status`` read
two lines per segment whatever the backlog. After bytes that are no valid frame,
:func:`walk` resynchronises on the next line that starts one.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

FRAME = b"#q "
TRAILER = b"#z "
_HEX = frozenset(b"0123456789abcdef")
MAX_HEADER = 16384  # bytes of a frame or trailer line (a frame holds at most ~1000 lines)


class Frame(NamedTuple):
    """A frame at ``offset`` whose header line is valid; its lines are ``data[body:stop]``.

    ``bad`` are the indexes of lines that fail their CRC (damaged points).
    """

    offset: int
    body: int
    stop: int
    seq: int
    count: int
    queued: int
    before: int
    db: bytes
    bad: tuple[int, ...] = ()


class Trailer(NamedTuple):
    """The summary line that seals a segment."""

    offset: int
    stop: int
    first: int
    next: int
    points: int
    oldest: int
    before: int
    dbs: tuple[bytes, ...]


class Damage(NamedTuple):
    """Bytes ``data[offset:stop]`` that are no valid frame (corrupt or torn)."""

    offset: int
    stop: int


def _line_crc(base: int, seq: int, line) -> int:
    return zlib.crc32(line, zlib.crc32(b"%d " % seq, base))


def _base(queued: int, db: bytes) -> int:
    return zlib.crc32(db, zlib.crc32(b"%d " % queued))


def pack_frame(seq: int, db: bytes, lines: Sequence[bytes], queued: int, before: int) -> bytes:
    """One frame of ``lines`` (line protocol without line ends) for database ``db``."""
    base = _base(queued, db)
    crcs = b",".join(b"%08x" % _line_crc(base, seq + i, line) for i, line in enumerate(lines))
    return b"#q %d %d %08x %s %s\n" % (seq, queued, before, crcs, db) + b"\n".join(lines) + b"\n"


def _trailer_crc(first: int, nxt: int, points: int, oldest: int, before: int, dbs: bytes) -> int:
    return zlib.crc32(dbs, zlib.crc32(b"%d %d %d %d %08x " % (first, nxt, points, oldest, before)))


def pack_trailer(
    first: int, nxt: int, points: int, oldest: int, before: int, dbs: tuple[bytes, ...]
) -> bytes:
    joined = b"/".join(sorted(dbs))
    crc = _trailer_crc(first, nxt, points, oldest, before, joined)
    return b"#z %d %d %d %d %08x %08x %s\n" % (first, nxt, points, oldest, before, crc, joined)


def header(data, offset: int) -> Frame | Trailer | None:
    """The frame or trailer whose line starts at ``offset``, if that line parses; else None.

    A frame's lines are not checked here (see :func:`check`); its ``stop`` is where its
    ``count`` lines end, or sooner where the next ``#`` line starts, or the end of ``data``.
    """
    nl = data.find(b"\n", offset, offset + MAX_HEADER)
    if nl < 0:
        return None
    line = bytes(data[offset:nl])
    try:
        if line.startswith(FRAME):
            _, seq, queued, before, crcs, db = line.split(b" ", 5)
            count = crcs.count(b",") + 1
            if len(crcs) != 9 * count - 1:
                return None
            following = data.find(b"\n#", nl)
            stop = following + 1 if following >= 0 else len(data)
            end = nl + 1  # or where its own lines end, if sooner: a damaged "#" after
            for _ in range(count):  # them (the next frame's, a trailer's) costs it nothing
                end = data.find(b"\n", end, stop) + 1
                if not end:
                    end = stop
                    break
            return Frame(offset, nl + 1, end, int(seq), count, int(queued), int(before, 16), db)
        if line.startswith(TRAILER):
            _, first, nxt, points, oldest, before, crc, dbs = line.split(b" ", 7)
            numbers = int(first), int(nxt), int(points), int(oldest), int(before, 16)
            if _trailer_crc(*numbers, dbs) != int(crc, 16):
                return None
            return Trailer(offset, nl + 1, *numbers, tuple(dbs.split(b"/")) if dbs else ())
    except ValueError:
        return None
    return None


def _hex(field: bytes) -> int:
    """A CRC field's value; -1 (matching no CRC) when it is damaged into no hex number."""
    return int(field, 16) if len(field) == 8 and set(field) <= _HEX else -1


def check(data, frame: Frame) -> Frame | None:
    """The frame with its damaged lines in ``bad``; None when its lines are not whole, or
    none of them checks (its frame line is what is damaged: its numbers cannot be trusted)."""
    lines = bytes(data[frame.body : frame.stop])
    if not lines.endswith(b"\n") or lines.count(b"\n") != frame.count:
        return None
    crcs = bytes(data[frame.offset : frame.body]).split(b" ", 5)[4].split(b",")
    wanted = [_hex(crc) for crc in crcs]  # a CRC that is no number: its line is lost
    base = _base(frame.queued, frame.db)
    bad = tuple(
        i
        for i, (line, crc) in enumerate(zip(lines.split(b"\n"), wanted, strict=False))
        if _line_crc(base, frame.seq + i, line) != crc
    )
    if len(bad) == frame.count:
        return None
    return frame._replace(bad=bad) if bad else frame


def looks_like(line, start: bytes) -> bool:
    """True when ``line`` begins with ``start`` (``#q `` or ``#z ``) but for a damaged byte."""
    return sum(a == b for a, b in zip(line[:3], start, strict=False)) >= 2


def estimate(data, start: int, stop: int) -> int:
    """How many points the damaged bytes ``data[start:stop]`` held, going by the CRC lists
    of the frame lines in them (a damaged frame line often keeps its list) or by the points'
    lines left in them, whichever says more; 0 when nothing is left to tell."""
    points = lines = 0
    for line in bytes(data[start:stop]).split(b"\n")[:-1]:
        if looks_like(line, TRAILER):
            continue
        if not looks_like(line, FRAME) and b"=" in line:  # a point's line (it has fields)
            lines += 1
            continue
        points += max(  # the list: the longest field of 8-character CRCs between commas
            (
                (len(field) + 1) // 9
                for field in line.split(b" ")
                if (len(field) + 1) % 9 == 0
                and field[8::9].count(b",") >= (len(field) + 1) // 9 - 2  # one comma hit
            ),
            default=0,
        )
    return max(points, lines)


def walk(data, offset: int = 0) -> Iterator[Frame | Trailer | Damage]:
    """Every frame (checked), trailer and damaged stretch from ``offset`` (a line start) on.

    After damage, reading resumes at the next line that starts a frame or trailer, so a bad
    byte costs at most the frame it falls in.
    """
    end = len(data)
    while offset < end:
        found = header(data, offset)
        if isinstance(found, Frame):
            checked = check(data, found)
            if checked is not None:
                yield checked
                offset = found.stop
                continue
        elif isinstance(found, Trailer):
            yield found
            offset = found.stop
            continue
        stop = _resync(data, offset + 1)
        yield Damage(offset, stop)
        offset = stop


def _resync(data, offset: int) -> int:
    """The start of the next line at or after ``offset`` that is a whole frame or a trailer."""
    end = len(data)
    while True:
        nl = data.find(b"\n#", offset - 1)
        if nl < 0:
            return end
        start = nl + 1
        found = header(data, start)
        if isinstance(found, Trailer) or (isinstance(found, Frame) and check(data, found)):
            return start
        offset = start + 1


def boundary_before(data, limit: int, start: int) -> int:
    """The last frame start ``b`` with ``start < b < limit`` in ``data``; or -1."""
    found = data.rfind(b"\n#", start, limit)
    return found + 1 if found >= 0 else -1


def boundary_after(data, start: int) -> int:
    """The first frame start after ``start``, or ``len(data)``."""
    found = data.find(b"\n#", start)
    return found + 1 if found >= 0 else len(data)
