"""``python -m pangocdp_async``: the ``pangocdp`` command (see ``pangocdp --help``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
