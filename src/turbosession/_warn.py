"""SQLAlchemy's warnings, issued from turbosession's code where stock's are.

SQLAlchemy attributes a warning to the first frame outside SQLAlchemy and
appends the tag of a tagged method on the stack (autoflush).  Issued from
turbosession, that search would stop at turbosession's own frames; ``warn``
runs the same search with turbosession's frames counted as internal too, so
the warning points at the user's line as stock's does.
"""

import re
import sys
import warnings

from sqlalchemy import exc as sa_exc
from sqlalchemy.util.langhelpers import _warning_tags

__all__ = ["warn"]

# frames a warning is not attributed to: SQLAlchemy's pattern, plus ours
_INTERNAL = re.compile(r"^(?:sqlalchemy\.(?!testing)|alembic\.|turbosession\.)")


def warn(message):
    """``sqlalchemy.util.warn`` pointing where stock's warning points."""
    frame, stacklevel = sys._getframe(1), 2
    found = tagged = False
    while frame is not None:
        if not found and not _INTERNAL.match(frame.f_globals.get("__name__", "")):
            found = True
        if frame.f_code in _warning_tags:
            tagged = True
            message = f"{message} ({_warning_tags[frame.f_code][0]})"
        frame = frame.f_back
        if not found:
            stacklevel += 1
        elif tagged:
            break
    warnings.warn(message, sa_exc.SAWarning, stacklevel=stacklevel)
