"""The public surface: what `import pangocdp_async` promises."""

from __future__ import annotations

import pangocdp_async
import pangocdp_async.testing


def test_all_names_exist_once() -> None:
    """Every name in __all__ exists once (ruff's RUF022 keeps the list sorted)."""
    assert len(set(pangocdp_async.__all__)) == len(pangocdp_async.__all__)
    for name in pangocdp_async.__all__:
        assert getattr(pangocdp_async, name) is not None


def test_public_names_are_exactly_these() -> None:
    """Adding or removing a public name is a deliberate act that changes this test."""
    assert set(pangocdp_async.__all__) == {
        "APIConnectionError", "APIStatusError", "APITimeoutError", "AuthenticationError",
        "BadRequestError", "DOCUMENTED_LIMITS", "IngestResult", "Margin", "PangoCDPClient",
        "PangoCDPError", "Policy", "QuotaScheduler", "QuotaStore", "QuotaWaitError", "RateLimit",
        "RateLimitedError", "RawResponse", "RequestValidationError", "Reservation",
        "SQLiteQuotaStore", "ServerError", "Transport", "UnsuccessfulResponseError",
        "ClientStats", "InDoubtRecord", "IngestReport", "IngestStream", "PipelineError",
        "RecordFailure",
        "RecordSourceError", "RetryPolicy", "UnsentRecord",
    }


def test_testing_module_exports() -> None:
    """The testing helpers users rely on are public."""
    assert "FakePangoCDP" in pangocdp_async.testing.__all__
    assert "run_in_virtual_time" in pangocdp_async.testing.__all__


def test_documented_limits_are_the_five_windows() -> None:
    """The five documented windows, from one source of truth."""
    assert [(lim.max_requests, lim.period) for lim in pangocdp_async.DOCUMENTED_LIMITS] == [
        (50, 1.0), (1000, 60.0), (5000, 300.0), (50000, 3600.0), (400000, 86400.0)
    ]
