"""Distributed echo load on Locust: the echo user (``locustfile.py``) and its c10k summary.

``c10k locust ARGS...`` runs Locust with ``locustfile.py`` and passes every
argument through. The modules here other than ``locustfile`` import neither
Locust nor gevent (gevent monkey-patches the process that imports it), so the
rest of c10k can use them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LOCUSTFILE"]

#: The locustfile to give ``locust -f``.
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
