"""``python -m mason``: the ``mason`` command line (see ``mason.cli``)."""

from .cli import main

raise SystemExit(main())
