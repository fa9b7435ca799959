"""``python -m core <command>``: the headless entry point (see ``python -m core --help``)."""
import sys

from core.cli import main

code = main()
if "core.distributed" in sys.modules:   # a torchrun rank ends without gloo's teardown (see exit_now)
    sys.modules["core.distributed"].exit_now(code)
raise SystemExit(code)
