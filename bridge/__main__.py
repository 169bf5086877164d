"""``python -m bridge``: the same as the ``xdm-bridge`` command."""

from adapters.ops.cli import main

raise SystemExit(main())
