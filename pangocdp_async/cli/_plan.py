"""How long a backfill takes under the documented windows, as the client paces it.

Pure arithmetic: no clock, no I/O. Both policies of :class:`QuotaScheduler` are modeled with
its own margins (each window counted as ``period + 0.1 s + 100 ppm``) and answers assumed
instant, so a plan is the best the client can do; a slow server only adds its round trips.

- ``sliding``: at most C sends in any window span. Sends go out in groups, each as large as
  every window allows at that instant; when one is full, the next group waits until its oldest
  group leaves it. Exact for the discrete schedule. Once the longest window has bound, the
  schedule repeats with its span as period (checked, not assumed), so long plans cost the same
  as short ones.
- ``token-bucket``: Bucket4j's greedy refill, as a fluid: every bucket starts full, the first
  instant sends as many as the smallest holds, then the rate is the refill rate of the slowest
  empty bucket; a phase ends when another bucket runs dry. Within one request of the discrete
  schedule.

Requests counted in a window before the plan starts (``already_sent``: the day's sends so far,
or a scheduler's live counts) are taken as sent at the plan's start, the worst case: they hold
their window for one whole span from now.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .._config import DOCUMENTED_LIMITS, Margin, RateLimit

__all__ = ["DAY_S", "Phase", "Plan", "describe_window", "plan_backfill", "short_window"]

DAY_S = 86_400.0
Policy = Literal["sliding", "token-bucket"]


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the plan in which one window sets the pace."""

    window: RateLimit
    start_s: float
    end_s: float
    requests: int


@dataclass(frozen=True, slots=True)
class Plan:
    """The schedule of ``requests`` requests carrying ``records`` records."""

    records: int
    requests: int
    batch_size: int
    policy: Policy
    #: When the last request starts (seconds from the start).
    duration_s: float
    phases: list[Phase]
    #: Requests started on each day (day 0 first), then entries the same way.
    requests_per_day: list[int] = field(default_factory=list)

    @property
    def entries_per_day(self) -> list[int]:
        out, before = [], 0
        for n in self.requests_per_day:
            done = min(self.records, (before + n) * self.batch_size)
            out.append(done - min(self.records, before * self.batch_size))
            before += n
        return out

    @property
    def binding(self) -> RateLimit | None:
        """The window that sets the pace at the end (the longest that ever bound)."""
        return self.phases[-1].window if self.phases else None


def describe_window(limit: RateLimit) -> str:
    """``"1,000 per minute"`` for RateLimit(1000, 60)."""
    names = {1.0: "second", 60.0: "minute", 300.0: "5 minutes", 3_600.0: "hour",
             DAY_S: "24 hours"}
    span = names.get(limit.period, f"{limit.period:g} s")
    return f"{limit.max_requests:,} per {span}"


def short_window(limit: RateLimit) -> str:
    """``"1,000/min"`` for RateLimit(1000, 60) (for the progress bar)."""
    names = {1.0: "s", 60.0: "min", 300.0: "5 min", 3_600.0: "h", DAY_S: "day"}
    return f"{limit.max_requests:,}/{names.get(limit.period, f'{limit.period:g} s')}"


def plan_backfill(
    records: int,
    *,
    batch_size: int = 50,
    policy: Policy = "sliding",
    limits: Sequence[RateLimit] = DOCUMENTED_LIMITS,
    margin: Margin | None = None,
    already_sent: dict[int, int] | None = None,
) -> Plan:
    """The plan for ``records`` records in requests of ``batch_size``. ``already_sent`` maps a
    window's index in ``limits`` (sorted shortest first) to requests it counts already."""
    if records < 0:
        raise ValueError(f"records must be >= 0, got {records}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limits = sorted(limits, key=lambda lim: lim.period)
    margin = margin if margin is not None else Margin()
    spans = [margin.widen(lim.period) for lim in limits]
    caps = [lim.max_requests for lim in limits]
    used = [0] * len(limits)
    for index, count in (already_sent or {}).items():
        if count < 0:
            raise ValueError(f"already sent must be >= 0, got {count}")
        used[index] = min(count, caps[index])
    requests = math.ceil(records / batch_size)
    if requests == 0 or not limits:
        return Plan(records, requests, batch_size, policy, 0.0, [],
                    [requests] if requests else [])
    if policy == "sliding":
        groups, binds = _sliding(requests, spans, caps, used)
    elif policy == "token-bucket":
        groups, binds = _fluid(requests, spans, caps, used)
    else:
        raise ValueError(f"policy must be 'sliding' or 'token-bucket', got {policy!r}")
    duration = max(end for _, end, _ in groups)
    phases = _phases(binds, groups, limits, duration)
    return Plan(records, requests, batch_size, policy, duration, phases, _per_day(groups))


# A segment: (start, end, requests): that many requests started evenly from start to end (a
# group sent at one instant has start == end). A bind: (time, window index) when that window
# started to set the pace.
Segment = tuple[float, float, float]
Bind = tuple[float, int]


def _sliding(requests: int, spans: list[float], caps: list[int],
             used: list[int]) -> tuple[list[Segment], list[Bind]]:
    longest = len(caps) - 1
    windows: list[deque[list[float]]] = [deque() for _ in caps]
    sums = [0] * len(caps)
    for k, u in enumerate(used):
        if u:
            windows[k].append([0.0, u])
            sums[k] = u
    groups: list[Segment] = []
    binds: list[Bind] = []
    periods: list[int] = []  # indexes of the groups that start a period of the longest window
    t = 0.0
    sent = 0
    while sent < requests:
        for k, window in enumerate(windows):
            span = spans[k]
            while window and window[0][0] + span <= t:
                sums[k] -= int(window.popleft()[1])
        room = min(c - s for c, s in zip(caps, sums, strict=True))
        if room > 0:
            n = min(room, requests - sent)
            for k, window in enumerate(windows):
                window.append([t, n])
                sums[k] += n
            groups.append((t, t, n))
            sent += n
            continue
        due, which = -1.0, 0
        for k, window in enumerate(windows):
            if sums[k] >= caps[k]:
                leave = window[0][0] + spans[k]
                if leave > due + 1e-9:
                    due, which = leave, k
        binds.append((t, which))  # the window holds sends back from now
        t = due
        # A new period of the longest window (not a tie with a shorter one inside a period).
        if which != longest or (periods and t - groups[periods[-1]][0] < spans[-1] / 2):
            continue
        periods.append(len(groups))
        if len(periods) >= 3:
            skipped = _repeat_periods(groups, periods, requests - sent)
            if skipped:
                n_periods, per_period, shift = skipped
                sent += n_periods * per_period
                t += n_periods * shift
                for window in windows:
                    for entry in window:
                        entry[0] += n_periods * shift
                periods.clear()
    return groups, binds


def _repeat_periods(groups: list[Segment], periods: list[int],
                    left: int) -> tuple[int, int, float] | None:
    """The last two periods of the longest window were alike (same groups, shifted by one
    period): the schedule repeats from here. Append whole periods as one segment each and
    return (periods, requests per period, period length), keeping the last for the loop."""
    a, b, c = periods[-3], periods[-2], periods[-1]
    first, second = groups[a:b], groups[b:c]
    if not first or len(first) != len(second):
        return None
    shift = second[0][0] - first[0][0]
    if any(abs(y[0] - x[0] - shift) > 1e-6 or x[2] != y[2]
           for x, y in zip(first, second, strict=True)):
        return None
    per_period = round(sum(g[2] for g in second))
    whole = left // per_period - 1  # the last period (and any part) is laid out by the loop
    if whole < 1:
        return None
    begin, end = second[0][0], second[-1][0]
    groups.extend((begin + shift * p, end + shift * p, float(per_period))
                  for p in range(1, whole + 1))
    return whole, per_period, shift


def _fluid(requests: int, spans: list[float], caps: list[int],
           used: list[int]) -> tuple[list[Segment], list[Bind]]:
    rates = [c / s for c, s in zip(caps, spans, strict=True)]
    tokens = [float(c - u) for c, u in zip(caps, used, strict=True)]
    eps = 1e-9
    t = 0.0
    sent = 0.0
    segments: list[Segment] = []
    binds: list[Bind] = []
    burst = min(float(requests), max(0.0, min(math.floor(x + eps) for x in tokens)))
    if burst > 0:
        tokens = [x - burst for x in tokens]
        sent = burst
        segments.append((0.0, 0.0, burst))
    while sent < requests - eps:
        # The pace is the refill rate of the slowest bucket that is empty.
        empty = [k for k, x in enumerate(tokens) if x < 1.0 - eps] or list(range(len(tokens)))
        which = min(empty, key=lambda k: rates[k])
        rate = rates[which]
        if not binds or binds[-1][1] != which:
            binds.append((t, which))
        # Until the requests are done, or a fuller, slower bucket runs dry.
        dt = (requests - sent) / rate
        for k, x in enumerate(tokens):
            if rates[k] < rate and x > eps:
                dt = min(dt, x / (rate - rates[k]))
        for k in range(len(tokens)):
            tokens[k] = max(0.0, min(float(caps[k]), tokens[k] + (rates[k] - rate) * dt))
        segments.append((t, t + dt, rate * dt))
        t += dt
        sent += rate * dt
    return segments, binds


def _before(segments: list[Segment], t: float) -> float:
    """Requests started before or at ``t``."""
    total = 0.0
    for start, end, n in segments:
        if end <= t:
            total += n
        elif start < t:
            total += n * (t - start) / (end - start)
    return total


def _phases(binds: list[Bind], segments: list[Segment], limits: list[RateLimit],
            duration: float) -> list[Phase]:
    """Phases by the longest window that has set the pace so far: a shorter one binding again
    inside a longer one's pace does not start a new phase. A phase starts when its window
    first holds a send back (the last send before the wait ends the phase before)."""
    starts: list[Bind] = [(0.0, 0)]
    for t, k in binds:
        if k > starts[-1][1]:
            if t <= 0.0:
                starts[-1] = (0.0, k)
            else:
                starts.append((t, k))
    phases = []
    total = sum(n for _, _, n in segments)
    done = 0
    for i, (start, k) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else duration
        upto = round(_before(segments, end)) if i + 1 < len(starts) else round(total)
        phases.append(Phase(limits[k], start, end, upto - done))
        done = upto
    return phases


def _per_day(segments: list[Segment]) -> list[int]:
    """Requests started on each day, day 0 first (a segment spread over days is shared out)."""
    days: list[float] = []
    for start, end, n in segments:
        first, last = int(start // DAY_S), int(end // DAY_S)
        while len(days) <= last:
            days.append(0.0)
        if first == last:
            days[first] += n
            continue
        for d in range(first, last + 1):
            lo, hi = max(start, d * DAY_S), min(end, (d + 1) * DAY_S)
            days[d] += n * (hi - lo) / (end - start)
    out, before, acc = [], 0, 0.0
    for x in days:  # rounded on the running total, so the days add up to the whole
        acc += x
        out.append(round(acc) - before)
        before = round(acc)
    return out
