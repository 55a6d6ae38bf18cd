"""`c10k locust ARGS...`: Locust with the c10k echo user; every argument goes to Locust."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from c10k.errors import C10kError, UsageError

_DESCRIPTION = """\
Run Locust with the c10k echo user (one Locust user = one connection) and pass
every argument to Locust: `c10k locust --host tcp://HOST:7000 --headless -u 5000
-r 500 --count 100 --csv out/run` or, distributed, `c10k locust --master ...` and
`c10k locust --worker --master-host HOST --processes -1` on each load machine.
The run ends once every connection has done its --count echoes (or at -t).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    # add_help=False and no option prefix of its own: every argument, --help too, is Locust's
    # (Locust's --help lists the c10k options as well)
    p = sub.add_parser("locust", add_help=False, prefix_chars="+",
                       help="distributed echo load on Locust (arguments go to Locust)",
                       description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("locust_args", nargs=argparse.REMAINDER, help="Locust's arguments")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from c10k.locust import LOCUSTFILE
    from c10k.locust.options import add_echo_arguments

    if importlib.util.find_spec("locust") is None:
        raise C10kError("Locust is not installed: pip install 'c10k[locust]'")
    if any(a in ("-f", "--locustfile") or a.startswith("--locustfile=") for a in args.locust_args):
        raise UsageError("c10k locust gives Locust its own locustfile: leave out -f/--locustfile")
    if any(a in ("-h", "--help") for a in args.locust_args):
        # Locust's --help does not load the locustfile, so it cannot list the c10k options: print them first
        echo = argparse.ArgumentParser(prog="c10k locust", add_help=False, description=_DESCRIPTION,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        add_echo_arguments(echo.add_argument_group("c10k echo options (also in the web UI)"), web_ui=False)
        echo.print_help()
        print()
    # exec, not import: Locust monkey-patches the process for gevent at import time
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args.locust_args]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached
