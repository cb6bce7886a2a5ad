"""Ranges of keys (inclusive ``(lo, hi)`` pairs): how the journal stores records and how a
resumed reader knows what to skip. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["batch_runs", "count", "merge", "runs_of", "subtract"]


def runs_of(keys: Iterable[int]) -> list[tuple[int, int]]:
    """Increasing keys -> ranges of consecutive keys."""
    out: list[tuple[int, int]] = []
    lo = hi = None
    for key in keys:
        if hi is not None and key == hi + 1:
            hi = key
            continue
        if lo is not None and hi is not None:
            out.append((lo, hi))
        lo = hi = key
    if lo is not None and hi is not None:
        out.append((lo, hi))
    return out


def batch_runs(positions: list[int]) -> list[tuple[int, int]]:
    if positions and positions[-1] - positions[0] == len(positions) - 1:
        return [(positions[0], positions[-1])]  # the usual batch: one run, no loop
    return runs_of(sorted(positions))


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(a, b) for a, b in merged]


def subtract(ranges: list[tuple[int, int]], minus: list[tuple[int, int]]
              ) -> list[tuple[int, int]]:
    """Merged ``ranges`` without the keys of merged ``minus``."""
    out: list[tuple[int, int]] = []
    j = 0
    for lo, hi in ranges:
        cur = lo
        while j < len(minus) and minus[j][1] < cur:
            j += 1
        k = j
        while cur <= hi and k < len(minus) and minus[k][0] <= hi:
            mlo, mhi = minus[k]
            if mlo > cur:
                out.append((cur, mlo - 1))
            cur = max(cur, mhi + 1)
            k += 1
        if cur <= hi:
            out.append((cur, hi))
    return out


def count(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)
