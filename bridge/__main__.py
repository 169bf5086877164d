"""``python -m bridge``: the same as the ``xdm-bridge`` command."""

from adapters.cli import main

raise SystemExit(main())
