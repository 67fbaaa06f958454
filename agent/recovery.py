"""What a queue finds on disk when it opens (and what ``status`` reads while it is closed).

Each sealed segment is summarised from two lines (its first frame and its trailer); the last
segment, the one a crash may have cut short, is read whole: a torn last write is set aside
and cut off, damage elsewhere is set aside and its points counted once. Damaged bytes go to
``<name>.corrupt/<segment>-<offset>.bin``; a file there also marks that damage as counted,
so finding it again after a restart does not count it twice. A segment file made anew under
a number used before (numbers start again once a queue was emptied) retires the old marks.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import segments
from agent.counters import read_counters
from agent.intervals import Intervals
from agent.quarantine import count_quarantined, held_from, legacy_counters, settled_from
from agent.ramfiles import existing_path, ram_candidates
from agent.segments import Damage, Frame, Trailer
from agent.stage import fits, left_in_ram, read_stage

log = logging.getLogger("sensorkit.buffer")

DROP_REASONS = {
    "cap": "the queue was full (oldest dropped)",
    "damaged": "damaged on disk (flipped bits or a torn write)",
    "quarantine_full": "the quarantine was full (oldest refused points dropped)",
    "unkept": "refused by the server, and the disk would not keep it in quarantine",
}


@dataclass(frozen=True)
class QueueStats:
    """A queue's part of ``sensorkit status``."""

    queued: int = 0
    queued_bytes: int = 0
    oldest_queued: float | None = None
    quarantined: int = 0
    dropped: int = 0
    dropped_by: dict[str, int] = field(default_factory=dict)  # reason -> points
    delivered: int = 0
    last_delivery: float | None = None
    in_ram: int = 0  # of ``queued``: only in RAM (a refused flush, a crash, a stage set aside)


def make_stats(
    counters: dict,
    queued: int,
    size: int,
    oldest: float | None,
    quarantined: int,
    in_ram: int = 0,
) -> QueueStats:
    """The one way queue statistics are put together, live or from disk."""
    by = {r: int(counters.get(f"dropped_{r}", 0)) for r in DROP_REASONS}  # type: ignore[call-overload]
    return QueueStats(
        queued=queued,
        queued_bytes=size if queued else 0,
        oldest_queued=oldest if queued else None,
        quarantined=quarantined,
        dropped=sum(by.values()),
        dropped_by={r: n for r, n in by.items() if n},
        delivered=int(counters.get("delivered", 0)),  # type: ignore[call-overload]
        last_delivery=counters.get("last_delivery"),  # type: ignore[arg-type]
        in_ram=min(in_ram, queued),
    )


@dataclass
class SegmentInfo:
    """One segment file and what is known of it without reading it again."""

    number: int
    path: Path
    first: int  # first sequence number held (== next when empty)
    next: int  # one past the last
    size: int = 0  # bytes of frames and trailer
    frames_end: int = 0  # where the trailer starts (== size when there is none)
    oldest: float | None = None  # when its first frame was queued
    dbs: set[bytes] = field(default_factory=set)
    chain: int = 0  # the CRC chain after its last frame: the next frame's ``before``
    sealed: bool = False
    damaged: bool = False  # damage was found: read it frame by frame

    @property
    def empty(self) -> bool:
        return self.size == 0


@dataclass
class Survey:
    """What is on disk: segments, the head, and the sequence numbers that are not there."""

    segments: list[SegmentInfo]
    head: int
    next_seq: int
    missing: Intervals  # never queued, or lost to damage
    newly_damaged: int  # points found damaged now, not counted before


def survey(directory: Path, name: str, repair: bool) -> Survey:
    """Read the head and each segment's summary; with ``repair``, mend what a crash left."""
    folder = directory / f"{name}.log"
    head = read_head(directory / f"{name}.head", name)
    if head is None:  # damaged: the copy kept with the counters (written with every drop)
        copy = read_counters(directory / f"{name}.stats").get("head", 0)
        head = copy if isinstance(copy, int) else 0
    paths = sorted(folder.glob("*.seg")) if folder.is_dir() else []
    found: list[SegmentInfo] = []
    missing = Intervals()
    damaged = 0
    for i, path in enumerate(paths):
        # the first segment's points start at the head at the earliest (those below it
        # were delivered): what measures damage at its very start
        prior = found[-1].next if found else head
        known_next = first_seq(paths[i + 1]) if i + 1 < len(paths) else None
        scanned = load(directory, name, path, i == len(paths) - 1, prior, repair, head, known_next)
        if scanned is None:
            continue
        segment, lost, fresh = scanned
        damaged += fresh
        for a, b in lost.ranges():
            missing.add(a, b)
        if found and found[-1].next < segment.first:
            missing.add(found[-1].next, segment.first)
        found.append(segment)
    if found:
        head = max(head, found[0].first)
    next_seq = max([head] + [s.next for s in found])
    settled = [s for s in found[:-1] if s.next <= head]
    if repair:
        for segment in settled:
            segment.path.unlink(missing_ok=True)
    found = [s for s in found if s not in settled]
    return Survey(found, head, next_seq, missing, damaged)


def read_head(path: Path, name: str = "") -> int | None:
    """The head recorded in ``path`` (``<seq> <crc32>``); 0 when absent, None when damaged
    (then an older copy, or the segments on disk, say where the queue starts: re-sending
    rather than losing)."""
    try:
        fields = path.read_text().split()
    except OSError:
        return 0
    except UnicodeDecodeError:
        fields = ["?"]
    try:
        if len(fields) == 1 and fields[0].isdigit():  # written before the CRC was added
            return int(fields[0])
        if len(fields) == 2 and fields[0].isdigit():
            head = int(fields[0])
            if int(fields[1], 16) == zlib.crc32(b"%d" % head):
                return head
    except ValueError:
        pass
    if not fields:
        return 0
    log.warning("queue %s: %s is damaged; reading from an older copy of the head", name, path)
    return None


def pack_head(head: int) -> str:
    return f"{head} {zlib.crc32(b'%d' % head):08x}\n"


def first_seq(path: Path) -> int | None:
    """The first sequence number a segment holds, from its trailer or its first frame when
    they check; None when neither does."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(segments.MAX_HEADER)
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - segments.MAX_HEADER))
            tail = handle.read()
    except OSError:
        return None
    at = tail.rfind(b"\n#z ")
    trailer = segments.header(tail, at + 1) if at >= 0 else None
    if isinstance(trailer, Trailer) and trailer.stop == len(tail):
        return trailer.first
    frame = segments.header(start, 0)
    if isinstance(frame, Frame) and segments.check(start, frame):  # None when cut short
        return frame.seq
    return None


def load(
    directory: Path,
    name: str,
    path: Path,
    last: bool,
    prior: int | None,
    repair: bool,
    head: int = 0,
    known_next: int | None = None,
) -> tuple[SegmentInfo, Intervals, int] | None:
    """One segment: its summary, the sequence ranges lost in it, and how many points were
    newly found damaged (to be counted); None for an empty file that is not the last.

    ``known_next`` is the next segment's first sequence number, when known: where damage at
    this one's end stops costing points."""
    number = int(path.stem)
    size = path.stat().st_size
    if size == 0:
        if not last:
            if repair:
                path.unlink(missing_ok=True)
            return None
        return SegmentInfo(number, path, prior or 0, prior or 0), Intervals(), 0
    with open(path, "rb") as handle:
        start = handle.read(min(size, segments.MAX_HEADER))
        if _is_legacy(start):
            data = _legacy(name, path, repair)
        else:
            if not last:
                handle.seek(max(0, size - segments.MAX_HEADER))
                summary = _summary(path, number, size, start, handle.read())
                if summary is not None:
                    return summary, Intervals(), 0
            handle.seek(0)
            data = handle.read()
    segment = SegmentInfo(number, path, prior or 0, prior or 0)
    lost, fresh = scan(
        directory, name, segment, data, prior, repair, last, None if last else known_next, head
    )
    return segment, lost, fresh


def _summary(path: Path, number: int, size: int, start: bytes, tail: bytes) -> SegmentInfo | None:
    """A sealed segment from its first frame line and its trailer; None to read it all."""
    first = segments.header(start, 0)
    at = tail.rfind(b"\n#z ")
    trailer = segments.header(tail, at + 1) if at >= 0 else None
    if not isinstance(first, Frame) or not isinstance(trailer, Trailer):
        return None
    if trailer.stop != len(tail) or trailer.first != first.seq:
        return None
    return SegmentInfo(
        number,
        path,
        trailer.first,
        trailer.next,
        size=size,
        frames_end=size - (trailer.stop - trailer.offset),
        oldest=float(trailer.oldest),
        dbs=set(trailer.dbs),
        chain=trailer.before,
        sealed=True,
    )


def scan(
    directory: Path,
    name: str,
    segment: SegmentInfo,
    data: bytes,
    prior: int | None,
    repair: bool = True,
    last: bool = False,
    known_next: int | None = None,
    head: int = 0,
) -> tuple[Intervals, int]:
    """Read a whole segment frame by frame and fill in ``segment``.

    Returns the sequence ranges that are not there (damaged points, with the gaps around
    damage) and how many points were newly found damaged. With ``repair``, damage is set
    aside; a torn end of the last segment is cut off (its points were never made durable).
    Points below ``head`` were delivered: damage to them costs nothing and is not counted.
    """
    lost = Intervals()
    expected = prior
    first: Frame | None = None
    final: Frame | None = None
    trailer: Trailer | None = None
    damage: list[tuple[Damage, int]] = []  # each stretch, and the points it cost
    bad_lines: list[tuple[Frame, int]] = []
    pending: Damage | None = None

    held: set[int] | None = None

    def cost(a: int, b: int) -> int:
        """Points ``a .. b - 1`` that damage costs: not delivered (below the head), not
        settled through the quarantine."""
        nonlocal held
        a = max(a, head)
        if b <= a:
            return 0
        if held is None:
            held = settled_from(directory / f"{name}.sqlite3", head)
        return b - a - sum(1 for s in held if a <= s < b)

    def gap(until: int) -> None:
        """Points between the last good frame and ``until``: lost in the pending damage."""
        if pending is not None and expected is not None and until > expected:
            lost.add(expected, until)
            damage.append((pending, cost(expected, until)))
        elif pending is not None and expected is None:  # nothing to measure the gap by
            damage.append((pending, max(1, segments.estimate(data, *pending))))
        elif pending is not None:
            damage.append((pending, 0))

    at = data.rfind(b"\n#z ")
    seal = segments.header(data, at + 1) if at >= 0 else None
    if isinstance(seal, Trailer) and (expected is None or expected < seal.first):
        expected = seal.first  # a sealed segment says where it starts, even damaged there
    elif expected is not None and expected == head:
        # The oldest segment: points from the head on that left through the quarantine
        # (their segments deleted since) are not in it, so its points start after them.
        if held is None:
            held = settled_from(directory / f"{name}.sqlite3", head)
        while expected in held:
            expected += 1

    for item in segments.walk(data):
        if isinstance(item, Damage):
            if pending is not None:
                damage.append((item, 0))  # the same gap: counted with the first stretch
            else:
                pending = item
            continue
        if isinstance(item, Trailer):
            trailer = item
            gap(item.next)
            pending = None
            break
        gap(item.seq)
        pending = None
        first = first or item
        final = item
        segment.dbs.add(item.db)
        for index in item.bad:
            lost.add(item.seq + index, item.seq + index + 1)
            bad_lines.append((item, index))  # counted when at or above the head
        expected = item.seq + item.count
    torn: Damage | None = None
    torn_points = 0
    if pending is not None:  # damage at the end: a torn last write, or corruption
        if last and known_next is None:
            torn = pending
            guess = segments.header(data, torn.offset)
            whole = isinstance(guess, Frame) and (guess.seq == expected or first is None)
            torn_points = max(  # a header that parses may still be damaged: the larger
                guess.count if whole else 1,  # type: ignore[union-attr]
                segments.estimate(data, torn.offset, torn.stop),
            )
            if whole and torn_points == guess.count:  # type: ignore[union-attr]
                torn_points = cost(guess.seq, guess.seq + guess.count)  # type: ignore[union-attr]
            elif expected is not None:  # they were the points from ``expected`` on
                torn_points = cost(expected, expected + torn_points)
        elif known_next is not None:  # the next segment says where this one ends
            gap(known_next)
        elif expected is not None and _trailer_only(data, pending):
            gap(expected)  # a damaged trailer: it held no point
        else:
            start = expected if expected is not None else segment.first
            gap(start + max(1, segments.estimate(data, *pending)))
    segment.first = first.seq if first else (expected if expected is not None else segment.first)
    if trailer is not None:
        segment.next = trailer.next
    else:
        segment.next = max(expected if expected is not None else segment.first, known_next or 0)
    segment.oldest = float(first.queued) if first else None
    segment.frames_end = trailer.offset if trailer else (torn.offset if torn else len(data))
    segment.size = torn.offset if torn else len(data)
    segment.sealed = trailer is not None
    segment.chain = (
        trailer.before
        if trailer
        else zlib.crc32(memoryview(data)[final.offset : final.stop], final.before)
        if final
        else 0
    )
    segment.damaged = bool(damage or bad_lines)
    fresh = 0
    if not repair:
        return lost, fresh
    for item, points in damage:
        if set_aside(directory, name, segment, item.offset, data[item.offset : item.stop]):
            fresh += points
            log.error(
                "queue %s: %s has %d damaged bytes at offset %d, set aside in %s.corrupt/; "
                "the points in them are counted as dropped",
                name,
                segment.path.name,
                item.stop - item.offset,
                item.offset,
                name,
            )
    for frame, index in bad_lines:
        start = frame.body + sum(
            len(line) + 1 for line in bytes(data[frame.body : frame.stop]).split(b"\n")[:index]
        )
        stop = data.find(b"\n", start) + 1
        if set_aside(directory, name, segment, start, data[start:stop]):
            fresh += cost(frame.seq + index, frame.seq + index + 1)
            log.error(
                "queue %s: %s: point %d is damaged, set aside in %s.corrupt/ and counted "
                "as dropped",
                name,
                segment.path.name,
                frame.seq + index,
                name,
            )
    if torn is not None:
        set_aside(directory, name, segment, torn.offset, data[torn.offset :])
        log.warning(
            "queue %s: %s ends in a torn record (power cut?); %d bytes set aside, %d points "
            "lost (counted)",
            name,
            segment.path.name,
            len(data) - torn.offset,
            torn_points,
        )
        os.truncate(segment.path, torn.offset)
        fresh += torn_points
    return lost, fresh


def _trailer_only(data: bytes, damage: Damage) -> bool:
    """True when damage at a segment's end is one line, its trailer but for damaged bytes."""
    blob = data[damage.offset : damage.stop]
    return blob.count(b"\n") <= 1 and segments.looks_like(blob, segments.TRAILER)


def set_aside(directory: Path, name: str, segment: SegmentInfo, offset: int, blob: bytes) -> bool:
    """Keep damaged bytes for inspection; True when they were not set aside (and counted)
    before."""
    folder = directory / f"{name}.corrupt"
    target = folder / f"{segment.number:016d}-{offset}.bin"
    if target.exists():
        return False
    try:
        folder.mkdir(exist_ok=True)
        target.write_bytes(blob)
    except OSError as err:
        log.error("queue %s: cannot keep damaged bytes aside in %s: %s", name, folder, err)
    return True


_LEGACY = struct.Struct(">IQdHI")  # crc32 of the rest, seq, queued time, len(db), len(line)


def _is_legacy(start: bytes) -> bool:
    """True when ``start`` opens with a whole record of sensorkit 0.1 that checks (a framed
    segment whose first byte is damaged is not one: its damage is set aside as any other)."""
    if len(start) < _LEGACY.size or start.startswith(b"#"):
        return False
    crc, _, _, db_len, line_len = _LEGACY.unpack_from(start)
    stop = _LEGACY.size + db_len + line_len
    return stop <= len(start) and zlib.crc32(start[4:stop]) == crc


def _legacy(name: str, path: Path, repair: bool) -> bytes:
    """A segment written by sensorkit 0.1 (a record per point), as frames; rewritten in place
    with ``repair``. A torn last record is left out, as 0.1 would have done."""
    blob = path.read_bytes()
    frames, chain, offset = [], 0, 0
    while offset + _LEGACY.size <= len(blob):
        crc, seq, queued, db_len, line_len = _LEGACY.unpack_from(blob, offset)
        stop = offset + _LEGACY.size + db_len + line_len
        if stop > len(blob) or zlib.crc32(blob[offset + 4 : stop]) != crc:
            break
        start = offset + _LEGACY.size
        db, line = blob[start : start + db_len], blob[start + db_len : stop]
        frame = segments.pack_frame(seq, db, [line], int(queued), chain)
        chain = zlib.crc32(frame, chain)
        frames.append(frame)
        offset = stop
    data = b"".join(frames)
    if repair:
        tmp = path.with_suffix(".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        log.info(
            "queue %s: %s converted to the framed format (%d points)", name, path.name, len(frames)
        )
    return data


def head_frame(
    found: list[SegmentInfo],
    head: int,
    read: Callable[[SegmentInfo, int, int], bytes] | None = None,
) -> tuple[int, int, float | None, int]:
    """(segment number, offset, time queued, bytes before ``head`` in it) of the frame
    holding ``head``: where reading starts. ``read`` reads a segment's bytes (the running
    queue's own reader, which knows what is still staged in RAM); else the file is read."""
    for segment in found:
        if segment.next <= head or segment.empty:
            continue
        if read is not None:
            data = read(segment, 0, segment.frames_end)
        else:
            with open(segment.path, "rb") as handle:
                data = handle.read(segment.frames_end)
        damaged = None  # damage that may hold points from the head on: read from there
        for item in segments.walk(data):
            if isinstance(item, Damage):
                damaged = item.offset if damaged is None else damaged
            elif isinstance(item, Frame) and item.seq + item.count <= head:
                damaged = None  # the damage before it was below the head too
            elif isinstance(item, Frame):
                if damaged is not None and item.seq > head:
                    return segment.number, damaged, None, 0
                skip = 0
                if item.seq < head:
                    lines = data[item.body : item.stop].split(b"\n")[: head - item.seq]
                    skip = item.body - item.offset + sum(len(line) + 1 for line in lines)
                return segment.number, item.offset, float(item.queued), skip
        if damaged is not None:
            return segment.number, damaged, None, 0
        return segment.number, len(data), None, 0
    return (found[-1].number, found[-1].size, None, 0) if found else (0, 0, None, 0)


def read_stats(directory: str | os.PathLike[str], name: str) -> QueueStats | None:
    """A queue's stats read without opening it for writing (for ``status``); None if absent.

    Reads what start-up reads: two lines of each sealed segment, and the last segment.
    """
    directory = Path(directory)
    if not (directory / f"{name}.log").is_dir() and not (directory / f"{name}.stats").exists():
        return None
    found = survey(directory, name, repair=False)
    sqlite_path = directory / f"{name}.sqlite3"
    counters = read_counters(directory / f"{name}.stats") or legacy_stats(sqlite_path)
    lost = sum(max(0, b - max(a, found.head)) for a, b in found.missing.ranges())
    count = found.next_seq - found.head - lost - held_from(sqlite_path, found.head)
    size, oldest = 0, None
    if count > 0:
        number, offset, oldest, skip = head_frame(found.segments, found.head)
        ahead = [s for s in found.segments if s.number >= number]
        size = sum(s.size for s in ahead) - offset - skip
    # What RAM holds (agent/stage.py), looked for in every RAM directory (the reader may not be
    # the user the agent runs as): the stage a kill -9 left, which the next start writes out
    # where it fits and queues again where it does not, and stages to be queued again.
    live = existing_path(directory, f"{name}.stage")
    in_ram = 0
    for path in _ram_stages(directory, name):
        number, offset, frames = read_stage(path)
        again = path != live or not fits(directory / f"{name}.log", number, offset, frames)
        for item in segments.walk(frames):
            if isinstance(item, Frame) and (again or item.seq >= found.next_seq):
                count, size = max(0, count) + item.count, max(0, size) + item.stop - item.offset
                oldest = float(item.queued) if oldest is None else oldest
                in_ram += item.count
    quarantined = count_quarantined(sqlite_path)
    return make_stats(counters, max(0, count), size, oldest, quarantined, in_ram)


def _ram_stages(directory: Path, name: str) -> list[Path]:
    """Every stage file of this queue in RAM: staged and set aside, each directory once."""
    found: dict[Path, Path] = {}
    for stage in ram_candidates(directory, f"{name}.stage"):
        for path in left_in_ram(stage):
            found.setdefault(path.resolve(), path)
    return list(found.values())


def legacy_stats(sqlite_path: Path) -> dict[str, object]:
    """Counters sensorkit 0.1 kept in the quarantine's SQLite file, under today's names."""
    return {
        ("dropped_cap" if k == "dropped" else k): v for k, v in legacy_counters(sqlite_path).items()
    }


def retire_marks(directory: Path, name: str, number: int, stamp: int) -> None:
    """A new segment takes ``number``: the damage set aside under that number was in an
    earlier file, and must not pass for this one's (it would go uncounted)."""
    folder = directory / f"{name}.corrupt"
    for mark in folder.glob(f"{number:016d}-*.bin") if folder.is_dir() else []:
        try:
            mark.rename(mark.with_name(f"{mark.stem}.{stamp}.old"))
        except OSError as err:
            log.error("queue %s: cannot retire %s: %s", name, mark, err)
