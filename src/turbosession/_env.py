"""How turbosession reads its on/off environment switches (build and run time).

The aio-libs convention (aiohttp, yarl, propcache): unset or empty is off, so
is an explicit ``0``/``false``/``off``/``no`` (any case); any other value
(``1``, ``true``, ...) is on.  So ``TURBOSESSION_NO_EXTENSIONS=0`` keeps the
compiled modules.  setup.py loads this file by path (it cannot import the
package), so it imports nothing.
"""

import os

_OFF = frozenset(("", "0", "false", "off", "no"))


def flag(name, environ=os.environ):
    """Whether the switch ``name`` is on in ``environ``."""
    return environ.get(name, "").strip().lower() not in _OFF
