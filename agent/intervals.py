"""A set of sequence numbers kept as sorted, disjoint ranges ``[start, stop)``.

The queue settles points out of order (batches in flight at once, a refused point in the
middle of a batch, another database's points held back); ranges keep that cheap however many
points are involved.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class Intervals:
    """Sorted disjoint half-open ranges; adjacent ranges are merged."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._stops: list[int] = []
        self.total = 0  # numbers covered

    def __bool__(self) -> bool:
        return bool(self._starts)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._stops, strict=True))

    def add(self, start: int, stop: int) -> int:
        """Cover ``[start, stop)``; returns how many numbers were not covered before."""
        if stop <= start:
            return 0
        i = bisect_left(self._stops, start)  # first range that ends at or after start
        j = bisect_right(self._starts, stop)  # ranges before j start at or before stop
        covered = 0
        new_start, new_stop = start, stop
        for k in range(i, j):
            a, b = self._starts[k], self._stops[k]
            covered += max(0, min(b, stop) - max(a, start))
            new_start, new_stop = min(new_start, a), max(new_stop, b)
        self._starts[i:j] = [new_start]
        self._stops[i:j] = [new_stop]
        fresh = (stop - start) - covered
        self.total += fresh
        return fresh

    def intersects(self, start: int, stop: int) -> bool:
        """True when any number in ``[start, stop)`` is covered."""
        i = bisect_right(self._stops, start)  # first range ending after start
        return i < len(self._starts) and self._starts[i] < stop

    def gaps(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The uncovered parts of ``[start, stop)``, in order."""
        out = []
        at = start
        i = bisect_right(self._stops, start)
        while at < stop:
            if i >= len(self._starts) or self._starts[i] >= stop:
                out.append((at, stop))
                break
            a, b = self._starts[i], self._stops[i]
            if a > at:
                out.append((at, a))
            at = max(at, b)
            i += 1
        return out

    def pop_from(self, head: int) -> int:
        """If a range starts at ``head``, remove it and return its end; else return ``head``.

        Ranges wholly below ``head`` are dropped too (they no longer matter).
        """
        while self._starts and self._stops[0] <= head:
            self.total -= self._stops[0] - self._starts[0]
            del self._starts[0], self._stops[0]
        if self._starts and self._starts[0] <= head:
            stop = self._stops[0]
            self.total -= stop - self._starts[0]
            del self._starts[0], self._stops[0]
            return stop
        return head

    def clear(self) -> None:
        self._starts.clear()
        self._stops.clear()
        self.total = 0
