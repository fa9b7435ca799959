"""``python -m core <command>``: the headless entry point (see ``python -m core --help``)."""
from core.cli import main

raise SystemExit(main())
