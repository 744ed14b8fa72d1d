"""The drop-in Session: an acceleration mixin over SQLAlchemy's Session.

``TurboSessionMixin`` can be put in front of any ``sqlalchemy.orm.Session``
subclass (``ShardedSession``, SQLModel's or Flask-SQLAlchemy's sessions) to
accelerate it; ``Session`` is the mixin over ``sqlalchemy.orm.Session``.
Only sessions of these classes change (row loading reaches them through the
import-time hooks of ``turbosession.instances``, neutral for every other session).
"""

import dis
import inspect
import weakref

from sqlalchemy import orm
from sqlalchemy.orm.base import object_state
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.orm import session as _session_module
from sqlalchemy.orm.session import _SessionCloseState
from sqlalchemy.util import EMPTY_DICT as _EMPTY_DICT, IdentitySet

from . import _impl, flush, transaction

__all__ = ["TurboSessionMixin", "Session", "sessionmaker", "scoped_session"]


class TurboSessionMixin:
    """Runs a Session's hot paths on turbosession's implementation.

    ``_turbo`` is the implementation bundle (``turbosession._impl.compiled``
    or ``.pure``); tests make subclasses that pin one of them.
    """

    _turbo = _impl.active

    # False sends every flush to stock's unit of work (counted as "disabled")
    _fast_flush = True

    # stock's _flush builds stock's UOWTransaction; ours builds turbosession's
    _flush = flush.flush

    def __init__(self, *args, **kw):
        if (
            _INIT_LIKE_STOCK
            and (not args if "bind" in kw else len(args) <= 1)
            and _DIRECT_INIT_KEYWORDS.issuperset(kw)
            and super(TurboSessionMixin, type(self)).__init__ is _STOCK_INIT
        ):
            # stock's __init__ given only arguments it just stores (a
            # Session(engine), a sessionmaker's usual ones): what it sets,
            # decided by the class resolving __init__ to stock's
            _init_like_stock(self, *args, **kw)
        else:
            super().__init__(*args, **kw)
            # stock __init__ made an empty _WeakInstanceDict nothing refers to yet
            self.identity_map = self._turbo.identity.WeakIdentityMap()
        # after stock's __init__: reading the instance's __dict__ before
        # it would make each of its attribute stores slower.
        # A session's own dispatcher (made on first access) has a slot per
        # event; the first time an event is asked for, the empty slot
        # raises and ``__getattr__`` fills it with the class's shared
        # ``_EmptyListener``.  A short transaction asks for about twenty
        # events, each an exception and a Python call; these slots get the
        # same objects at once, for a session whose dispatcher __init__
        # did not make (so nothing listens on it yet).  A listener added
        # later, to the session or its class, finds what it would have
        # found: it replaces the slot's _EmptyListener with the session's
        # own collection, and one added to the class is seen through the
        # shared _EmptyListener as before.  Compiled, open_dispatch also
        # makes the dispatcher as stock's descriptor would, without its
        # Python calls.
        if "dispatch" not in self.__dict__:
            self._turbo.attach.open_dispatch(self)

    def commit(self):
        # stock's, with the root transaction's commit in turbosession.transaction
        trans = self._transaction
        if trans is None:
            trans = self._autobegin_t()
        transaction.commit(self, trans)

    def _connection_for_bind(self, engine, execution_options=None, **kw):
        # the connection the transaction holds, or the root transaction's
        # first one, without the state machine's wrappers; stock's in any
        # other case
        conn = transaction.connection_for_bind(self, engine, execution_options)
        if conn is None:
            return super()._connection_for_bind(engine, execution_options, **kw)
        return conn

    # stock's, creating turbosession's SessionTransaction (its commit
    # expires objects on turbosession._expire_*)
    _autobegin_t = transaction.autobegin

    # Attaching objects (turbosession._attach_*).  Each method takes the
    # compiled loop only when the session's class leaves every method stock's
    # version would call as stock's, and when no flush is running (stock then
    # warns from _flush_warning); otherwise it is stock's method as is.

    # the bundle's compiled function (a subclass pinning another bundle gets
    # that bundle's, __init_subclass__): add_all below for one object
    add = _impl.active.attach.session_add

    def add_all(self, instances):
        cls = type(self)
        if (
            self._warn_on_events
            or cls.add not in _SESSION_ADDS
            or super(TurboSessionMixin, cls).add_all is not orm.Session.add_all
            or not _adds_like_stock(self)
        ):
            # a subclass overriding add() sees stock's add_all call it
            return super().add_all(instances)
        self._turbo.attach.add_all(self, instances)

    # the bundle's compiled function (a subclass pinning another bundle gets
    # that bundle's, __init_subclass__): delete_all below for one object
    delete = _impl.active.attach.session_delete

    def delete_all(self, instances):
        if self._warn_on_events or not _deletes_like_stock(self):
            return super().delete_all(instances)
        self._turbo.attach.delete_all(self, instances)

    def expunge_all(self):
        # stock's, step for step, with turbosession's map as the new one
        # (stock's would make a _WeakInstanceDict only to have it replaced;
        # close() runs this for every session)
        all_states = self.identity_map.all_states() + list(self._new)
        self.identity_map._kill()
        self.identity_map = self._turbo.identity.WeakIdentityMap()
        self._new = {}
        self._deleted = {}
        if InstanceState.__dict__["_detach_states"] is _STOCK_DETACH_STATES:
            # stock's, its per-state loop compiled (turbosession._expire)
            self._turbo.expire.detach_all(self, all_states)
        else:
            InstanceState._detach_states(all_states, self)

    # Loading (turbosession._loading): get() answers an identity-map hit with
    # no options itself, and is stock's get() otherwise.  The method is the
    # bundle's compiled function; a subclass pinning another bundle gets
    # that bundle's (__init_subclass__).
    get = _impl.active.loading.session_get

    # Session.execute / scalars / scalar (turbosession._loading): an ORM
    # select() executed again without options skips stock's per-call setup;
    # anything else is stock's _execute_internal.
    _execute_internal = _impl.active.loading.session_execute_internal

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "_turbo" in cls.__dict__ and any(cls.get is get for get in _SESSION_GETS):
            cls.get = cls._turbo.loading.session_get
        if "_turbo" in cls.__dict__ and cls._execute_internal in _SESSION_EXECUTE_INTERNALS:
            cls._execute_internal = cls._turbo.loading.session_execute_internal
        if "_turbo" in cls.__dict__ and cls.delete in _SESSION_DELETES:
            cls.delete = cls._turbo.attach.session_delete
        if "_turbo" in cls.__dict__ and cls.add in _SESSION_ADDS:
            cls.add = cls._turbo.attach.session_add

    # Dirty tracking (turbosession._tracking_*).  ``_dirty_states`` stays
    # stock's: it already returns the identity map's modified set as is.

    def _is_clean(self):
        return self._turbo.tracking.is_clean(
            self.identity_map, self._new, self._deleted
        )

    @property
    def dirty(self):
        return IdentitySet(
            self._turbo.tracking.dirty_objects(self._dirty_states, self._deleted)
        )

    def is_modified(self, instance, include_collections=True):
        # object_state first: an unmapped instance raises as in stock
        return self._turbo.tracking.has_net_changes(
            object_state(instance), include_collections
        )


_STOCK_DETACH_STATES = InstanceState.__dict__["_detach_states"]

_STOCK_INIT = orm.Session.__init__
# the keyword arguments _init_like_stock takes: those stock's __init__ only
# stores (bind may be given by keyword too)
_DIRECT_INIT_KEYWORDS = frozenset(("bind", "autoflush", "expire_on_commit", "autobegin"))
_CLOSE_IS_RESET = _SessionCloseState.CLOSE_IS_RESET


def _init_like_stock(
    session, bind=None, *, autoflush=True, expire_on_commit=True, autobegin=True
):
    """``orm.Session.__init__(session, bind, autoflush=..., expire_on_commit=...,
    autobegin=...)``: the attributes stock's sets for these arguments, with
    the same values, stored the same way in the same order (turbosession's
    identity map where stock's makes a ``_WeakInstanceDict`` that the mixin
    replaced at once), then the session registered in ``_sessions`` under a
    new id.  Stock's checks of the other arguments find their defaults."""
    session.identity_map = session._turbo.identity.WeakIdentityMap()
    session._new = {}
    session._deleted = {}
    session.bind = bind
    session.binds = _EMPTY_DICT
    session._flushing = False
    session._warn_on_events = False
    session._transaction = None
    session._nested_transaction = None
    session.hash_key = hash_key = _session_module._new_sessionid()
    session.autobegin = autobegin
    session.autoflush = autoflush
    session.expire_on_commit = expire_on_commit
    session.enable_baked_queries = True
    session._close_state = _CLOSE_IS_RESET
    session.join_transaction_mode = "conditional_savepoint"
    session.twophase = False
    session._query_cls = _session_module.query.Query
    _register(session, hash_key)


_WeakValueDictionary = weakref.WeakValueDictionary
_KeyedRef = weakref.KeyedRef
_STOCK_REGISTRY_SETITEM = _WeakValueDictionary.__setitem__
_STOCK_KEYED_REF_NEW = _KeyedRef.__new__
_STOCK_KEYED_REF_INIT = _KeyedRef.__init__
_new_weakref = weakref.ref.__new__


def _register(session, hash_key):
    """Stock's ``_sessions[hash_key] = session``: the ``WeakValueDictionary``
    stores ``KeyedRef(session, _sessions._remove, hash_key)`` under the key.
    ``KeyedRef``'s ``__new__`` and ``__init__`` are Python methods (two
    frames and a ``super()`` each, about 4k instructions of the 6k the
    store costs); the same reference is made here by the weak reference's
    own constructor and its ``key`` slot set, as ``KeyedRef.__new__`` does
    (its ``__init__`` only checks the arguments again).  Stock's store runs
    while removals are pending (it commits them first), or when the
    registry, its ``__setitem__`` or ``KeyedRef`` is not the standard
    library's."""
    registry = _session_module._sessions
    if (
        type(registry) is not _WeakValueDictionary
        or registry._pending_removals
        or _WeakValueDictionary.__setitem__ is not _STOCK_REGISTRY_SETITEM
        or _KeyedRef.__new__ is not _STOCK_KEYED_REF_NEW
        or _KeyedRef.__init__ is not _STOCK_KEYED_REF_INIT
    ):
        registry[hash_key] = session
        return
    entry = _new_weakref(_KeyedRef, session, registry._remove)
    entry.key = hash_key
    registry.data[hash_key] = entry


# the defaults of stock's other arguments, which _init_like_stock's stores assume
_ASSUMED_DEFAULTS = {
    "future": True, "twophase": False, "binds": None, "enable_baked_queries": True,
    "info": None, "query_cls": None, "autocommit": False,
    "join_transaction_mode": "conditional_savepoint",
    "close_resets_only": _session_module._NoArg.NO_ARG, "execution_options": _EMPTY_DICT,
}


def _stored_attributes(function):
    return {i.argval for i in dis.get_instructions(function) if i.opname == "STORE_ATTR"}


def _init_like_stock_applies():
    """Whether ``_init_like_stock`` does what this SQLAlchemy's
    ``Session.__init__`` does: ``bind`` its one positional argument and the
    others keyword-only with the defaults ``_ASSUMED_DEFAULTS`` names, and the
    attributes it stores those ``_init_like_stock`` stores (plus
    ``execution_options``, stored only when that argument is given).  Decided
    once at import; when not, every session runs stock's ``__init__``."""
    params = dict(inspect.signature(_STOCK_INIT).parameters)
    positional = [name for name, param in params.items() if param.kind is param.POSITIONAL_OR_KEYWORD]
    if positional != ["self", "bind"] or params.pop("bind").default is not None:
        return False
    del params["self"]
    for name in ("autoflush", "expire_on_commit", "autobegin"):
        param = params.pop(name, None)
        if param is None or param.kind is not param.KEYWORD_ONLY or param.default is not True:
            return False
    return (
        {name: param.default for name, param in params.items()} == _ASSUMED_DEFAULTS
        and _stored_attributes(_STOCK_INIT) - {"execution_options"}
        == _stored_attributes(_init_like_stock)
    )


_INIT_LIKE_STOCK = _init_like_stock_applies()

# each bundle's Session.get, which a subclass pinning a bundle swaps
_SESSION_GETS = tuple(
    bundle.loading.session_get for bundle in (_impl.compiled, _impl.pure) if bundle is not None
)

# each bundle's Session._execute_internal, which a subclass pinning a bundle swaps
_SESSION_EXECUTE_INTERNALS = tuple(
    bundle.loading.session_execute_internal
    for bundle in (_impl.compiled, _impl.pure)
    if bundle is not None
)
# each bundle's Session.delete, which a subclass pinning a bundle swaps
_SESSION_DELETES = tuple(
    bundle.attach.session_delete for bundle in (_impl.compiled, _impl.pure) if bundle is not None
)
# each bundle's Session.add, which a subclass pinning a bundle swaps
_SESSION_ADDS = tuple(
    bundle.attach.session_add for bundle in (_impl.compiled, _impl.pure) if bundle is not None
)
for _bundle in (_impl.compiled, _impl.pure):
    if _bundle is not None:
        _bundle.loading.set_session_classes(TurboSessionMixin, _SESSION_EXECUTE_INTERNALS)
del _bundle

# What stock's add() and delete() reach through ``self``.  The fast path is
# taken only while a session resolves all of them to stock's; a mock.patch of
# Session or of one session counts too, so this is checked on every call.
_ATTACH_HOOK_NAMES = tuple(
    (
        "add",
        "add_all",
        "delete",
        "delete_all",
        "_save_or_update_state",
        "_save_or_update_impl",
        "_save_impl",
        "_update_impl",
        "_delete_impl",
        "_before_attach",
        "_after_attach",
        "_autobegin_t",
        "_contains_state",
    )
)


def _adds_like_stock(session):
    return session._turbo.attach.hooks_like(
        session, TurboSessionMixin, _STOCK_ADD_HOOKS, _ATTACH_HOOK_NAMES
    )


def _deletes_like_stock(session):
    return session._turbo.attach.hooks_like(
        session, TurboSessionMixin, _STOCK_DELETE_HOOKS, _ATTACH_HOOK_NAMES
    )


# (name, looked up after the mixin): what stock's add() and delete() call
_ADD_HOOKS = (
    ("add", True),
    ("_save_or_update_state", False),
    ("_save_or_update_impl", False),
    ("_save_impl", False),
    ("_update_impl", False),
    ("_before_attach", False),
    ("_after_attach", False),
    ("_autobegin_t", False),
    ("_contains_state", False),
)
_DELETE_HOOKS = (
    ("delete", True),
    ("delete_all", True),
    ("_delete_impl", False),
    ("_before_attach", False),
    ("_after_attach", False),
    ("_autobegin_t", False),
)


def _hooks_of(cls, hooks):
    """``(name, after_mixin, function)`` for each hook as ``cls`` resolves it."""
    above = super(TurboSessionMixin, cls)
    return tuple(
        (name, after_mixin, getattr(above if after_mixin else cls, name))
        for name, after_mixin in hooks
    )


class Session(TurboSessionMixin, orm.Session):
    """``sqlalchemy.orm.Session`` with turbosession's hot paths."""


# the hooks as stock's Session has them, seen from a class using the mixin
_STOCK_ADD_HOOKS = _hooks_of(Session, _ADD_HOOKS)
_STOCK_DELETE_HOOKS = _hooks_of(Session, _DELETE_HOOKS)
for _bundle in (_impl.compiled, _impl.pure):
    if _bundle is not None:
        _bundle.attach.set_session_hooks(
            TurboSessionMixin, _STOCK_DELETE_HOOKS, _STOCK_ADD_HOOKS, _ATTACH_HOOK_NAMES
        )
del _bundle


transaction.set_session_methods(TurboSessionMixin)

# the transaction's method check on the compiled module (see there)
if _impl.active is _impl.compiled:
    transaction.set_class_check(_impl.compiled.attach.class_like)


class sessionmaker(orm.sessionmaker):
    """``sqlalchemy.orm.sessionmaker`` whose ``class_`` defaults to turbosession's Session."""

    def __init__(self, bind=None, *, class_=Session, **kw):
        super().__init__(bind, class_=class_, **kw)


# scoped_session only calls the factory it is given; with turbosession's
# sessionmaker (or Session) as that factory it yields turbosession sessions.
scoped_session = orm.scoped_session
