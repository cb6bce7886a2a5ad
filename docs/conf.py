"""Sphinx configuration: `make docs` builds the site into docs/_build/html, with warnings as
errors (-W -n): a broken cross-reference, a page left out of the tree, a public name without a
docstring or missing from the reference each fail the build."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pangocdp_async  # noqa: E402
import pangocdp_async.testing  # noqa: E402

project = "pangocdp-async"
author = "the pangocdp-async developers"
release = version = pangocdp_async.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "myst_parser"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"pangocdp-async {release}"
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Every public member is listed, documented or not: one without a docstring fails the build.
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
# Nothing is fetched while building (no network here): outside names are not linked.
intersphinx_mapping: dict[str, Any] = {}
nitpicky = True
# Names from outside the package that the annotations mention, and type variables.
nitpick_ignore_regex = [
    ("py:class", r"(aiohttp|asyncio|collections|typing|pathlib|random|datetime|types|os|"
                 r"sqlite3|redis|contextlib|concurrent|_io|io|logging|enum)\..*"),
    ("py:class", r"(T|_T|P|Any|Callable|Awaitable|Iterable|AsyncIterable|AsyncIterator|Iterator|"
                 r"Sequence|Mapping|Literal|Path|PathLike|TracebackType|Self|ssl\.SSLContext|"
                 r"pydantic\..*|BaseModel|NoneType|StrPath|Policy|Refill|Respond|"
                 r"BackendDownPolicy|Record|Records|JSONValue|Json|Sink|DeadLetter|Clock|Sleep)"),
    # Internal names that signatures mention (a base class, a protocol, typed dicts, type vars):
    # what they are is said where they appear.
    ("py:class", r"yarl\..*"),
    ("py:class", r"(.*\.)?(BulkRun|QuotaBackend|QuotaConfig|HostClock|ScriptStep|EntryRejecter|"
                 r"Credentials|"
                 r"ClientKwargs|SchedulerHooks|T)"),
    ("py:func", r"asyncio\..*"),
    ("py:obj", r".*\.(T|_T|P)"),
]

#: The modules whose ``__all__`` is the public API: every name must be in the reference.
PUBLIC = {"pangocdp_async": pangocdp_async, "pangocdp_async.testing": pangocdp_async.testing}


def _own_docstring(what: str, obj: Any, lines: list[str]) -> bool:
    """Whether ``obj`` says what it is itself: a class's docstring inherited from its base, or a
    constant's that is its type's (a tuple's), does not count."""
    text = "\n".join(lines).strip()
    if not text:
        return False
    if what in ("class", "exception"):
        return bool((vars(obj).get("__doc__") or "").strip())
    if what == "data":
        return text != (inspect.getdoc(type(obj)) or "").strip()
    return True


def _no_docstring(app: Any, what: str, name: str, obj: Any, options: Any,
                  lines: list[str]) -> None:
    # (dataclass fields, an "attribute" each, are described in their class's docstring)
    if what in ("module", "attribute"):
        return
    if not _own_docstring(what, obj, lines):
        from sphinx.util import logging as sphinx_logging
        sphinx_logging.getLogger(__name__).warning(
            "%s (%s) has no docstring: every public name needs one", name, what)


def _every_public_name_documented(app: Any, env: Any) -> None:
    from sphinx.util import logging as sphinx_logging
    log = sphinx_logging.getLogger(__name__)
    described = set(env.get_domain("py").objects)  # autodoc's and hand-written entries
    for module_name, module in PUBLIC.items():
        for name in module.__all__:
            if f"{module_name}.{name}" not in described:
                log.warning("%s.%s is public (in __all__) but not in the API reference",
                            module_name, name)


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _no_docstring)
    app.connect("env-check-consistency", _every_public_name_documented)
