"""The public surface: what `import pangocdp_async` promises."""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path

import pytest

import pangocdp_async
import pangocdp_async.testing


def test_all_names_exist_once_and_are_documented() -> None:
    """Every name in __all__ exists once (ruff's RUF022 keeps the list sorted), and every
    public class and function says what it is."""
    assert len(set(pangocdp_async.__all__)) == len(pangocdp_async.__all__)
    for module in (pangocdp_async, pangocdp_async.testing):
        for name in module.__all__:
            obj = getattr(module, name)  # AttributeError if __all__ names a missing thing
            # (a generic alias such as testing.Respond passes isclass() on Python 3.10)
            if (inspect.isclass(obj) and not isinstance(obj, types.GenericAlias)) \
                    or inspect.isfunction(obj):
                assert obj.__module__.startswith("pangocdp_async"), name
                assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


@pytest.mark.slow
def test_nothing_below_the_client_imports_it() -> None:
    """Data flows one way: no module of the package but __init__ imports the client (the
    bulk run gets what it needs handed in). The command line (``cli/``) is a user of the client,
    above it; nothing below imports the command line."""
    root = Path(pangocdp_async.__file__).parent
    for path in root.rglob("*.py"):
        if path.name in ("__init__.py", "_client.py", "__main__.py") and path.parent == root:
            continue
        if path.parent == root / "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                assert not node.module.startswith(("cli", ".cli")), f"{path} imports the cli"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                assert not node.module.endswith("_client"), f"{path} imports the client"


def test_public_names_are_exactly_these() -> None:
    """Adding or removing a public name is a deliberate act that changes this test."""
    assert set(pangocdp_async.__all__) == {
        "APIConnectionError", "APIStatusError", "APITimeoutError", "AuthenticationError",
        "BadRequestError", "DOCUMENTED_LIMITS", "IngestResult", "Margin", "PangoCDPClient",
        "PangoCDPError", "Policy", "QuotaScheduler", "QuotaStore", "QuotaWaitError", "RateLimit",
        "RateLimitedError", "RawResponse", "RedirectError", "RequestValidationError", "Reservation",
        "SQLiteQuotaStore", "ServerError", "Transport", "UnsuccessfulResponseError",
        "ClientStats", "InDoubtRecord", "IngestReport", "IngestStream", "PipelineError",
        "RecordFailure",
        "RecordSourceError", "RetryPolicy", "UnsentRecord",
        # one quota for many processes
        "Limiter", "QuotaBackendError", "QuotaConfigError", "RedisQuotaBackend",
        "SQLiteQuotaBackend", "SharedQuotaScheduler", "limiter_from_spec",
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
