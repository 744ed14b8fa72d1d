"""Flask-SQLAlchemy's ``db.session`` on turbosession.

Flask-SQLAlchemy 3 picks the engine per model's bind key in its own
``flask_sqlalchemy.session.Session``; ``Session`` here is that class with
turbosession's hot paths, to be passed as the session class::

    from flask_sqlalchemy import SQLAlchemy
    from turbosession.ext.flask_sqlalchemy import Session

    db = SQLAlchemy(session_options={"class_": Session})
"""

from flask_sqlalchemy import session as fsa_session

from ..session import TurboSessionMixin

__all__ = ["Session"]


class Session(TurboSessionMixin, fsa_session.Session):
    pass
