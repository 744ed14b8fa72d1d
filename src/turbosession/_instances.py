"""Loading rows as objects: the per-row loop of stock's ``_instance`` closure.

``RowLoader`` is what a query's row processor is in a turbosession session
when ``turbosession.instances`` decided, once per query setup, that the query
has the common shape (one plain mapper, no refresh, no ``populate_existing``,
no version check).  It is built from stock's own ``_instance`` closure: every
value stock computed for this query (the primary-key getter, the populators,
the load path, the post-load, the event flags, the identity map) is read from
that closure's cells, so nothing of the per-query setup is repeated here.

Per row it does what the closure does for the two rows that make up almost
every load: a row whose identity is not in the identity map (a new object,
populated through the "quick", "expire" and "new" populators, ``load`` and
``loaded_as_persistent`` fired) and the first row of an object already in
the map with nothing to load (left alone, offered to the post-load).  Any
other row (a second row of an object in this load, an object with unloaded
or expired attributes, eager populators, a version check) is handed to stock's
closure before anything is changed, so it is processed by stock's code.
"""

from __future__ import annotations

from sqlalchemy.orm import loading
from sqlalchemy.orm.state import InstanceState

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

__all__ = ["RowLoader", "counts", "reset_counts"]


def _is_compiled():
    return cython.compiled


if cython.compiled:
    from cython.cimports.cpython.weakref import PyWeakref_NewRef

_warn_for_runid_changed = loading._warn_for_runid_changed

# what InstanceState.__init__ reads in SQLAlchemy 2.1: it sets class_,
# manager, obj (a weakref with the state's _cleanup), committed_state and
# expired_attributes, which RowLoader._new_object does itself when compiled
_STATE_INIT_NAMES = (
    "__class__", "class_", "manager", "weakref", "ref", "_cleanup", "obj",
    "committed_state", "set", "expired_attributes",
)


# InstanceState.__init__ as imported, when it is the one described above
_KNOWN_INIT = (
    InstanceState.__init__
    if InstanceState.__init__.__code__.co_names == _STATE_INIT_NAMES
    and InstanceState.__new__ is object.__new__
    else None
)


def _init_is_known(state_class) -> cython.bint:
    return state_class is InstanceState and InstanceState.__init__ is _KNOWN_INIT


# the cells of stock's closure RowLoader reads, in the order of ``at``; all
# but the last are assigned in every closure, loaded_as_persistent only when
# the session has loaded_as_persistent listeners
CELLS = (
    "context", "identity_class", "identity_token", "primary_key_getter",
    "session_identity_map", "is_not_primary_key", "session_id", "runid", "load_path",
    "propagated_loader_options", "populators", "load_evt", "persistent_evt", "post_load",
    "loaded_as_persistent",
)
_ALWAYS_ASSIGNED = cython.declare(cython.Py_ssize_t, len(CELLS) - 1)

_rows_fast = cython.declare(cython.Py_ssize_t, 0)
_rows_stock = cython.declare(cython.Py_ssize_t, 0)


def counts():
    """``{"rows": n, "rows_to_stock": n}``: rows this loop handled, and rows
    it handed to stock's closure, so far."""
    return {"rows": _rows_fast, "rows_to_stock": _rows_stock}


def reset_counts():
    global _rows_fast, _rows_stock
    _rows_fast = 0
    _rows_stock = 0


@cython.cclass
class RowLoader:
    """One query entity's row processor: ``loader(row)`` is ``stock(row)``."""

    stock = cython.declare(object)
    context = cython.declare(object)
    identity_class = cython.declare(object)
    identity_token = cython.declare(object)
    primary_key_getter = cython.declare(object)
    identity_map = cython.declare(object)
    is_not_primary_key = cython.declare(object)
    manager = cython.declare(object)
    class_ = cython.declare(object)
    new_object = cython.declare(object)
    state_constructor = cython.declare(object)
    init_inline = cython.declare(cython.bint)
    state_attr = cython.declare(str)
    session_id = cython.declare(object)
    runid = cython.declare(object)
    load_path = cython.declare(object)
    load_options = cython.declare(object)
    quick = cython.declare(list)
    expired_keys = cython.declare(tuple)
    new_populators = cython.declare(list)
    has_eager = cython.declare(cython.bint)
    load_evt = cython.declare(cython.bint)
    persistent_evt = cython.declare(cython.bint)
    loaded_as_persistent = cython.declare(object)
    post_load = cython.declare(object)
    hits_to_stock = cython.declare(cython.bint)

    def __init__(self, stock, closure, at, manager, state_attr, hits_to_stock):
        # ``at``: the position in ``closure`` of each cell named in CELLS
        i: cython.Py_ssize_t
        cells = [closure[i].cell_contents for i in at[:_ALWAYS_ASSIGNED]]
        (context, identity_class, identity_token, primary_key_getter, identity_map,
         is_not_primary_key, session_id, runid, load_path, load_options, populators,
         load_evt, persistent_evt, post_load) = cells
        self.stock = stock
        self.context = context
        self.identity_class = identity_class
        self.identity_token = identity_token
        self.primary_key_getter = primary_key_getter
        self.identity_map = identity_map
        self.is_not_primary_key = is_not_primary_key
        self.manager = manager
        self.class_ = manager.class_
        self.new_object = self.class_.__new__
        # a memoized property that fires first_init when first read: read it
        # only once stock's new_instance() has (see _new_object)
        self.state_constructor = manager.__dict__.get("_state_constructor")
        self.init_inline = _init_is_known(self.state_constructor)
        self.state_attr = state_attr
        self.session_id = session_id
        self.runid = runid
        self.load_path = load_path
        self.load_options = load_options
        # stock's lists, used as they are (nothing changes them after setup):
        # a get() miss builds one RowLoader per row, so no copies
        self.quick = populators["quick"]
        # without populate_existing, an "expire" populator only adds to
        # expired_attributes, and only when its flag is set
        expire = populators["expire"]
        self.expired_keys = (
            tuple([key for key, flag in expire if flag]) if expire else None
        )
        self.new_populators = populators["new"]
        self.has_eager = bool(populators["eager"])
        self.load_evt = load_evt
        self.persistent_evt = persistent_evt
        # assigned only when there are listeners
        self.loaded_as_persistent = closure[at[_ALWAYS_ASSIGNED]].cell_contents if self.persistent_evt else None
        self.post_load = post_load
        self.hits_to_stock = hits_to_stock

    @cython.cfunc
    def _to_stock(self, row) -> object:
        global _rows_stock
        _rows_stock += 1
        return self.stock(row)

    @cython.cfunc
    def _new_object(self) -> object:
        """A new instance with its InstanceState, as ``manager.new_instance()``.

        Compiled, when the state class is stock's ``InstanceState`` with the
        ``__init__`` this version knows (``_STATE_INIT_NAMES``), the state's
        five slots are set here in that order rather than through a Python
        call of ``__init__``: that call was about 15% of the instructions per row.
        """
        if self.state_constructor is None:
            instance = self.manager.new_instance()
            self.state_constructor = self.manager.__dict__.get("_state_constructor")
            self.init_inline = _init_is_known(self.state_constructor)
            return instance
        instance = self.new_object(self.class_)
        if cython.compiled and self.init_inline:
            state = object.__new__(self.state_constructor)
            state.class_ = self.class_
            state.manager = self.manager
            state.obj = PyWeakref_NewRef(instance, state._cleanup)
            state.committed_state = {}
            state.expired_attributes = set()
        else:
            state = self.state_constructor(instance, self.manager)
        setattr(instance, self.state_attr, state)
        return instance

    def __call__(self, row):
        global _rows_fast
        pk = self.primary_key_getter(row)
        identitykey = (self.identity_class, pk, self.identity_token)
        instance = self.identity_map.get(identitykey)
        if instance is not None:
            if self.hits_to_stock:
                return self._to_stock(row)
            state = getattr(instance, self.state_attr)
            if state.runid == self.runid or self.has_eager:
                # a later row of an object of this load, or eager loaders
                return self._to_stock(row)
            context = self.context
            if state.unloaded or state in context.partials:
                # attributes to load into an object already present
                return self._to_stock(row)
            if self.post_load is not None and context.invoke_all_eagers:
                self.post_load.add_state(state, False)
            _rows_fast += 1
            return instance

        if self.is_not_primary_key(pk):
            # NULLs in the primary key: no object for this row
            return None

        instance = self._new_object()
        dict_ = instance.__dict__
        state = getattr(instance, self.state_attr)
        state.key = identitykey
        state.identity_token = self.identity_token
        state.session_id = self.session_id
        identity_map = self.identity_map
        identity_map._add_unpresent(state, identitykey)
        state.load_options = self.load_options
        state.load_path = self.load_path

        state.runid = self.runid
        for key, getter in self.quick:
            dict_[key] = getter(row)
        if self.expired_keys:
            expired = state.expired_attributes
            for key in self.expired_keys:
                expired.add(key)
        for key, populator in self.new_populators:
            populator(state, dict_, row)

        if self.load_evt or self.persistent_evt:
            existing_runid = state.runid
            if self.load_evt:
                state.manager.dispatch.load(state, self.context)
                if state.runid != existing_runid:
                    _warn_for_runid_changed(state)
            if self.persistent_evt:
                self.loaded_as_persistent(self.context.session, state)
                if state.runid != existing_runid:
                    _warn_for_runid_changed(state)
        if state.modified:
            state._commit_all(dict_, identity_map)
        if self.post_load is not None:
            self.post_load.add_state(state, True)
        _rows_fast += 1
        return instance
