"""Every number and name the library relies on, in one place.

Labels follow the contract: *doc* = PangoCDP's public help centre, *seen* = public third-party
integrations, *ours* = a default we chose (and that callers can change).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_AUTH_URL",
    "DEFAULT_BACKOFF_INITIAL_S",
    "DEFAULT_BACKOFF_MAX_S",
    "DEFAULT_CLOCK_STEP_ALLOWANCE_S",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_INGEST_URL",
    "DEFAULT_LINGER_S",
    "DEFAULT_MARGIN_ABSOLUTE_S",
    "DEFAULT_MARGIN_RELATIVE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_RATE_LIMITED",
    "DEFAULT_MAX_RETRY_AFTER_S",
    "DEFAULT_RETRY_BUDGET_S",
    "DEFAULT_SAVE_EVERY",
    "DEFAULT_SHUTDOWN_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "DOCUMENTED_WINDOWS",
    "ENV_API_KEY",
    "ENV_AUTH_URL",
    "ENV_GROUP_KEY",
    "ENV_INGEST_URL",
    "ENV_USERNAME",
    "GATEWAY_STATUSES",
    "HEADER_API_KEY",
    "HEADER_RATE_LIMIT_REMAINING",
    "HEADER_RETRY_AFTER",
    "HEADER_TOKEN",
    "LATENCY_SAMPLES",
    "MAX_ENTRIES_PER_REQUEST",
    "PAUSE_JITTER",
    "RATE_LIMIT_EPISODE_S",
    "RETRY_AFTER_PAD_S",
    "TOKEN_REFRESH_MARGIN_S",
]

# seen: the URLs public integrations call; override with the arguments or the env vars below.
DEFAULT_AUTH_URL: Final = "https://account.mydatalakes.com/api/accounts/authen"
DEFAULT_INGEST_URL: Final = "https://svc.mydatalakes.com/dhub-i/api/v1.0/ingest"

ENV_USERNAME: Final = "PANGOCDP_USERNAME"
ENV_API_KEY: Final = "PANGOCDP_API_KEY"
ENV_GROUP_KEY: Final = "PANGOCDP_GROUP_KEY"
ENV_AUTH_URL: Final = "PANGOCDP_AUTH_URL"
ENV_INGEST_URL: Final = "PANGOCDP_INGEST_URL"

# doc: request headers carrying the credentials (both names contain an underscore, which some
# proxies drop by default).
HEADER_TOKEN: Final = "TOKEN"  # noqa: S105 -- a header name, not a credential
HEADER_API_KEY: Final = "API_KEY"
# doc / inferred (Bucket4j convention): rate-limit response headers.
HEADER_RETRY_AFTER: Final = "X-Rate-Limit-Retry-After-Seconds"
HEADER_RATE_LIMIT_REMAINING: Final = "X-Rate-Limit-Remaining"

# doc: "entries ... Size: 1-50 entities" (the "Max 100" line is the looser of two statements).
MAX_ENTRIES_PER_REQUEST: Final = 50

# doc: the five request windows, as (max requests, period in seconds).
DOCUMENTED_WINDOWS: Final[tuple[tuple[int, float], ...]] = (
    (50, 1.0),
    (1_000, 60.0),
    (5_000, 300.0),
    (50_000, 3_600.0),
    (400_000, 86_400.0),
)

# ours: a token is refreshed this long before the server says it expires.
TOKEN_REFRESH_MARGIN_S: Final = 60.0
# ours: total time allowed for one HTTP request.
DEFAULT_TIMEOUT_S: Final = 30.0
# ours: every window is widened by absolute + relative * period before the scheduler counts a
# send out of it. Arrival jitter needs no margin (a send is counted until its answer is back,
# the latest moment it can have arrived); the absolute part is a floor for what that cannot
# see (the server's own queueing before its limiter reads the clock, a request still in the
# kernel when a timeout gives up on it); the relative part absorbs a client clock that runs
# faster than the server's (100 ppm).
DEFAULT_MARGIN_ABSOLUTE_S: Final = 0.1
DEFAULT_MARGIN_RELATIVE: Final = 1e-4

# ours: the quota scheduler's answer to a 429. Every sender pauses for the server's hint (which
# Bucket4j truncates to whole seconds) plus RETRY_AFTER_PAD_S, stretched by up to PAUSE_JITTER
# so that clients do not resynchronise. Hints above DEFAULT_MAX_RETRY_AFTER_S are treated as
# that (an interval-refilled daily window can honestly say up to 86,400 s; a proxy can say
# anything). 429s less than RATE_LIMIT_EPISODE_S apart (after the previous pause) form one
# episode, in which each new 429 models one more window as full, shortest first.
RETRY_AFTER_PAD_S: Final = 1.0
PAUSE_JITTER: Final = 0.1
DEFAULT_MAX_RETRY_AFTER_S: Final = 3_600.0
RATE_LIMIT_EPISODE_S: Final = 300.0
# ours: the saved quota state is written every this many sends (and on close).
DEFAULT_SAVE_EVERY: Final = 50
# ours: a restored state is read as if the wall clock may have been stepped forward by up to
# this much between save and load (NTP steps are usually well under a second).
DEFAULT_CLOCK_STEP_ALLOWANCE_S: Final = 2.0

# ours: retry defaults (RetryPolicy). A batch gets this many attempts for 5xx, connection errors
# and timeouts, waiting a full-jitter exponential backoff between them, within a time budget.
DEFAULT_MAX_ATTEMPTS: Final = 6
DEFAULT_BACKOFF_INITIAL_S: Final = 0.5
DEFAULT_BACKOFF_MAX_S: Final = 30.0
DEFAULT_RETRY_BUDGET_S: Final = 600.0
# ours: 429s tolerated for one batch before it is reported failed (each already paused everyone).
DEFAULT_MAX_RATE_LIMITED: Final = 20
# ours: answers from a gateway (502 Bad Gateway, 504 Gateway Timeout) say nothing about whether
# the server behind it stored the request: a batch that got one may be stored (in doubt).
GATEWAY_STATUSES: Final = frozenset({502, 504})
# ours: pipeline defaults.
DEFAULT_CONCURRENCY: Final = 8
DEFAULT_LINGER_S: Final = 0.5
DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 30.0
# ours: how many recent request latencies client.stats keeps for its percentiles.
LATENCY_SAMPLES: Final = 2_048
