# CPython C API that Cython's own cpython/*.pxd do not declare, for the hot
# paths that cimport it (compiled only: the pure implementation never reads it).

cimport cython
from cpython.object cimport PyObject, PyTypeObject, Py_TYPE
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.weakref cimport PyWeakref_GetRef

cdef extern from "Python.h":
    # a slot of a class's __slots__ (types.MemberDescriptorType)
    ctypedef struct PyMemberDef:
        const char *name
        int type
        Py_ssize_t offset
        int flags

    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member

    PyTypeObject PyMemberDescr_Type
    PyTypeObject PyGetSetDescr_Type
    PyTypeObject PyBaseObject_Type
    PyTypeObject PyType_Type

    # the attribute a class's MRO gives ``name`` (borrowed; NULL: none)
    PyObject *_PyType_Lookup(PyTypeObject *type, object name)

    # where an object's __dict__ is (NULL: it has none); made from the
    # object's inline values first where CPython 3.11 keeps them so
    PyObject **_PyObject_GetDictPtr(object obj)
    PyObject *PyDict_GetItemWithError(object d, object key) except? NULL

    # exactly a weakref.ref, no subclass (a macro Cython's cpython.weakref lacks)
    bint PyWeakref_CheckRefExact(object ob)

    # leaves a container out of the collector's generations (what CPython
    # does itself for a dict or tuple holding only atoms)
    void PyObject_GC_UnTrack(void *op)
    int PyObject_GC_IsTracked(object op)
    # whether an object is one the collector can track at all (an int, a
    # str, None are not)
    bint PyObject_IS_GC(object op)

    # a bound method (Cython's cpython.method declares Python 2's signature)
    object PyMethod_New(object func, object self)

    # dict lookups with a hash computed once (CPython's exported private API,
    # what dict.get and dict.__setitem__ call after hashing the key)
    PyObject *_PyDict_GetItem_KnownHash(object mp, object key, Py_hash_t hash) except? NULL
    int _PyDict_SetItem_KnownHash(object mp, object key, object item, Py_hash_t hash) except -1

    # where an object's __dict__ is (made from its inline values if need be;
    # NULL for a class without one)
    PyObject **_PyObject_GetDictPtr(object obj)

    # a getset descriptor (types.GetSetDescriptorType) and its C getter, as
    # Cython makes one for a cclass's public attribute (a new reference, NULL
    # with the exception set)
    ctypedef object (*getter)(object, void *)
    ctypedef struct PyGetSetDef:
        const char *name
        getter get
        void *closure

    ctypedef struct PyGetSetDescrObject:
        PyGetSetDef *d_getset

cdef extern from *:
    """
    /* A dict's version (PEP 509): CPython 3.11 gives every dict a fresh one
       from one global 64-bit counter when it is made and whenever a key is
       inserted or deleted, so an unchanged version is the same dict with the
       same keys.  3.12 deprecates it and 3.14 removes it: 0 there, which
       callers read as "no version". */
    #if PY_VERSION_HEX < 0x030C0000 && !defined(PYPY_VERSION)
    #define __ts_dict_version(d) (((PyDictObject *)(d))->ma_version_tag)
    #else
    #define __ts_dict_version(d) ((unsigned long long)0)
    #endif
    """
    unsigned long long dict_version "__ts_dict_version"(dict d)

cdef extern from "structmember.h":
    int T_OBJECT_EX
    int READONLY
    int READ_RESTRICTED


cdef inline void store_slot(object obj, Py_ssize_t offset, object value) noexcept:
    """What a ``T_OBJECT_EX`` member descriptor's ``__set__`` stores at
    ``offset`` of ``obj`` (PyMember_SetOne), without the attribute lookup."""
    cdef PyObject **slot = <PyObject **>((<char *><PyObject *>obj) + offset)
    cdef PyObject *old = slot[0]
    Py_INCREF(value)
    slot[0] = <PyObject *>value
    Py_XDECREF(old)


cdef inline Py_ssize_t writable_slot_offset(object descr) noexcept:
    """Where ``store_slot`` stores for the member descriptor ``descr`` (a
    ``types.MemberDescriptorType``, checked by the caller): its offset when
    it is a writable object slot (``T_OBJECT_EX``, not ``READONLY``), else
    -1."""
    cdef PyMemberDef *member = (<PyMemberDescrObject *><PyObject *>descr).d_member
    if member.type != T_OBJECT_EX or member.flags & READONLY:
        return -1
    return member.offset


cdef inline Py_ssize_t address(object obj) noexcept:
    """``id(obj)`` without calling the builtin."""
    return <Py_ssize_t><PyObject *>obj


cdef inline object dict_get(object mapping, object key, object default):
    """``mapping.get(key, default)``: a dict itself (an object's
    ``__dict__``, a state's ``committed_state``) read as C reads it,
    without looking up and calling the method; anything else calls it."""
    if type(mapping) is dict:
        return (<dict>mapping).get(key, default)
    return mapping.get(key, default)


cdef inline object instance_dict(object obj):
    """``obj.__dict__`` without the attribute lookup, or None when its class
    gives it none."""
    cdef PyObject **where = _PyObject_GetDictPtr(obj)
    if where is NULL or where[0] is NULL:
        return None
    return <object>where[0]


cdef inline object getset_get(object descr, object obj):
    """``descr.__get__(obj)`` of a ``types.GetSetDescriptorType`` through its
    C getter, without the attribute lookup or the descriptor call."""
    return (<PyGetSetDescrObject *>descr).d_getset.get(obj, NULL)


cdef inline object state_object(object state):
    """``state.obj()``: the object, or None once it has been collected.  A
    plain ``weakref.ref`` (stock's) is read without a Python call; anything
    else (a dereferenced state's function returning None) is called."""
    ref = state.obj
    if not PyWeakref_CheckRefExact(ref):
        return ref()
    return ref_target(ref)


cdef inline object ref_target(object ref):
    """``ref()`` of a ``weakref.ref`` without a Python call: its object, or
    None once that has been collected."""
    cdef PyObject *found
    if PyWeakref_GetRef(ref, &found) != 1:
        return None
    result = <object>found
    Py_DECREF(result)  # GetRef's own reference: result holds one
    return result


cdef inline unsigned int type_version_tag(object cls) noexcept:
    """CPython's version tag of a class, 0 when it has none.  Tags come from
    one global counter and are never reused; setting or deleting an attribute
    of the class or of a class in its MRO, or assigning its bases, resets it
    to 0 and the next attribute lookup gives a new one.  So an unchanged
    non-zero tag is the same class with the same attributes as when it was
    read."""
    return (<PyTypeObject *>cls).tp_version_tag


# A call site's reading of one slot attribute (``__slots__``), kept for the
# last class read there: the class, its version tag then, the slot's offset.
cdef struct SlotSite:
    PyTypeObject *cls  # compared only: its version tag says it is the same
    unsigned int tag
    Py_ssize_t offset


cdef inline object slot_value(object obj, str name, SlotSite *site):
    """``getattr(obj, name)`` where ``obj``'s class gives ``name`` as a slot
    (a ``__slots__`` member, a data descriptor: the instance's dict is never
    looked at) and looks attributes up as ``object`` does (``__getattr__``
    is only called when that fails): the value stored at the slot's offset,
    found without the class's attribute lookup while the class keeps the
    version tag it had when ``site`` was filled (a new class, or any change
    to the class or its MRO, has another).  An empty slot, and any other
    class, take ``getattr`` itself."""
    cdef PyTypeObject *cls = <PyTypeObject *>Py_TYPE(obj)
    cdef PyObject *value
    if cls == site.cls and site.tag != 0 and cls.tp_version_tag == site.tag:
        value = (<PyObject **>((<char *><PyObject *>obj) + site.offset))[0]
        if value != NULL:
            return <object>value
        return getattr(obj, name)
    fill_slot_site(cls, name, site)
    return getattr(obj, name)


cdef inline bint looks_up_as_object(PyTypeObject *cls, unsigned int tag) noexcept:
    """Whether ``cls``, with version tag ``tag`` (0: none, nothing can be
    kept), looks its instances' attributes up with ``object``'s
    ``__getattribute__``: what both site fillers below ask first."""
    cdef PyObject *found
    if tag == 0:
        return False
    found = _PyType_Lookup(cls, "__getattribute__")
    return found != NULL and found == _PyType_Lookup(&PyBaseObject_Type, "__getattribute__")


cdef inline void fill_slot_site(PyTypeObject *cls, str name, SlotSite *site) noexcept:
    """``site`` set for ``cls`` when ``cls`` reads ``name`` as a plain slot
    of ``object``'s attribute lookup, else cleared."""
    cdef unsigned int tag = cls.tp_version_tag
    cdef PyObject *found
    cdef PyMemberDef *member
    site.cls = NULL
    site.tag = 0
    if not looks_up_as_object(cls, tag):
        return
    found = _PyType_Lookup(cls, name)
    if found == NULL or Py_TYPE(<object>found) != &PyMemberDescr_Type:
        return
    member = (<PyMemberDescrObject *>found).d_member
    if member.type != T_OBJECT_EX or member.flags & READ_RESTRICTED:
        return
    # the lookups assign no tag to a class that had one: still the same class
    if cls.tp_version_tag != tag:
        return
    site.cls = cls
    site.tag = tag
    site.offset = member.offset


# A call site's check of one class attribute, kept for the last class that
# passed it there: the class and its version tag then (and, for
# ``class_attribute_is``, its metaclass and the metaclass's tag then).
cdef struct ClassSite:
    PyTypeObject *cls  # compared only: its version tag says it is the same
    unsigned int tag
    PyTypeObject *meta  # compared only, as cls
    unsigned int meta_tag


cdef inline bint class_attribute_is(object cls, str name, object expected, ClassSite *site) except -1:
    """``getattr(cls, name) is expected``, looked up only when ``cls`` is not
    the class that last passed at ``site`` with the version tag it has now
    (any change to the class or its MRO gives it another) and the same
    metaclass with the tag it had then.  Kept only where the metaclass
    reads class attributes as ``type`` does (``type`` itself, or one such
    as ``ABCMeta``, the metaclass of SQLAlchemy's listener collections,
    with no ``__getattribute__`` or ``__getattr__`` of its own) and its
    MRO has nothing under ``name`` (a data descriptor there would be read
    instead of the class's value)."""
    cdef PyTypeObject *tp = <PyTypeObject *>cls
    cdef PyTypeObject *meta = Py_TYPE(cls)
    cdef unsigned int tag = tp.tp_version_tag
    cdef unsigned int meta_tag = meta.tp_version_tag
    if (
        tp == site.cls and tag != 0 and tag == site.tag
        and meta == site.meta and meta_tag == site.meta_tag
    ):
        return True
    site.cls = NULL
    site.tag = 0
    site.meta = NULL
    site.meta_tag = 0
    if getattr(cls, name) is not expected:
        return False
    # getattr's lookups give a tag to a class or metaclass that had none
    tag = tp.tp_version_tag
    meta_tag = meta.tp_version_tag
    if (
        tag != 0
        and meta_tag != 0
        and _PyType_Lookup(meta, "__getattribute__")
        == _PyType_Lookup(&PyType_Type, "__getattribute__")
        and _PyType_Lookup(meta, "__getattr__") == NULL
        and _PyType_Lookup(meta, name) == NULL
        and tp.tp_version_tag == tag
        and meta.tp_version_tag == meta_tag
    ):
        site.cls = tp
        site.tag = tag
        site.meta = meta
        site.meta_tag = meta_tag
    return True


cdef inline object class_lookup(object cls, str name):
    """What ``cls``'s MRO holds under ``name``, as stored (a descriptor is
    not called): the first ``__dict__`` entry, or None when none has it."""
    cdef PyObject *found = _PyType_Lookup(<PyTypeObject *>cls, name)
    if found == NULL:
        return None
    return <object>found


cdef inline object own_value(object obj, str name, ClassSite *site):
    """``getattr(obj, name)`` where ``obj``'s class has no data descriptor
    ``name`` (none at all, or a plain class value or method a value of the
    instance's own shadows) and looks attributes up as ``object`` does:
    the instance's ``__dict__`` entry, read without the class's attribute
    lookup while the class keeps the version tag it had when ``site`` was
    filled.  No entry (the class's value, ``__getattr__``), and any other
    class, take ``getattr`` itself."""
    cdef PyTypeObject *cls = <PyTypeObject *>Py_TYPE(obj)
    cdef PyObject **dict_ptr
    cdef PyObject *value
    if cls == site.cls and site.tag != 0 and cls.tp_version_tag == site.tag:
        dict_ptr = _PyObject_GetDictPtr(obj)
        if dict_ptr != NULL and dict_ptr[0] != NULL:
            value = PyDict_GetItemWithError(<object>dict_ptr[0], name)
            if value != NULL:
                return <object>value
        return getattr(obj, name)
    fill_own_site(cls, name, site)
    return getattr(obj, name)


cdef inline void fill_own_site(PyTypeObject *cls, str name, ClassSite *site) noexcept:
    """``site`` set for ``cls`` when ``cls`` looks attributes up as
    ``object`` does and has no data descriptor ``name``, else cleared."""
    cdef unsigned int tag = cls.tp_version_tag
    cdef PyObject *found
    site.cls = NULL
    site.tag = 0
    if not looks_up_as_object(cls, tag):
        return
    found = _PyType_Lookup(cls, name)
    if found != NULL and (<PyTypeObject *>Py_TYPE(<object>found)).tp_descr_set != NULL:
        return
    if cls.tp_version_tag != tag:
        return
    site.cls = cls
    site.tag = tag


cdef inline bint own_attributes(object cls, tuple names, ClassSite *site) except -1:
    """Whether setting and getting each of ``names`` on an instance of
    ``cls`` is storing it in and reading it from the instance's
    ``__dict__``, else the class's value (``class_lookup``): ``cls`` looks
    attributes up and sets them as ``object`` does, and its MRO gives each
    name a plain value (no descriptor of any kind).  Kept for the class
    that last passed at ``site`` while it has the version tag it had then
    (any change to the class or its MRO gives it another)."""
    cdef PyTypeObject *tp = <PyTypeObject *>cls
    cdef unsigned int tag = tp.tp_version_tag
    cdef PyObject *found
    if tp == site.cls and tag != 0 and tag == site.tag:
        return True
    site.cls = NULL
    site.tag = 0
    if not looks_up_as_object(tp, tag):
        return False
    found = _PyType_Lookup(tp, "__setattr__")
    if found == NULL or found != _PyType_Lookup(&PyBaseObject_Type, "__setattr__"):
        return False
    for name in names:
        found = _PyType_Lookup(tp, name)
        if found == NULL or (
            (<PyTypeObject *>Py_TYPE(<object>found)).tp_descr_get != NULL
            or (<PyTypeObject *>Py_TYPE(<object>found)).tp_descr_set != NULL
        ):
            return False
    if tp.tp_version_tag != tag:
        return False
    site.cls = tp
    site.tag = tag
    return True


cdef inline bint stores_own(object cls, str name, ClassSite *site) except -1:
    """Whether setting ``name`` on an instance of ``cls`` is storing it in
    the instance's ``__dict__``: ``cls`` sets attributes as ``object`` does
    and its MRO has no data descriptor ``name`` (nothing, a plain value, or
    a method such as ``InstanceState._instance_dict``, which the instance's
    entry shadows).  Kept as ``own_attributes`` keeps its answer."""
    cdef PyTypeObject *tp = <PyTypeObject *>cls
    cdef unsigned int tag = tp.tp_version_tag
    cdef PyObject *found
    if tp == site.cls and tag != 0 and tag == site.tag:
        return True
    site.cls = NULL
    site.tag = 0
    if tag == 0:
        return False
    found = _PyType_Lookup(tp, "__setattr__")
    if found == NULL or found != _PyType_Lookup(&PyBaseObject_Type, "__setattr__"):
        return False
    found = _PyType_Lookup(tp, name)
    if found != NULL and (<PyTypeObject *>Py_TYPE(<object>found)).tp_descr_set != NULL:
        return False
    if tp.tp_version_tag != tag:
        return False
    site.cls = tp
    site.tag = tag
    return True


cdef inline object own_dict(object obj, tuple names, ClassSite *site):
    """``obj``'s own ``__dict__`` (a dict itself) while ``own_attributes``
    accepts ``names`` for its class (kept at ``site``), so that those
    attributes can be read (``own_entry``) and stored there; None for any
    other class, or while ``obj`` has no ``__dict__`` yet."""
    if not own_attributes(type(obj), names, site):
        return None
    found = instance_dict(obj)
    if found is None or type(found) is not dict:
        return None
    return found


cdef inline object own_entry(object own, object obj, str name):
    """``getattr(obj, name)`` for a name ``own_attributes`` accepted for
    ``obj``'s class, given ``obj``'s ``__dict__`` ``own`` (a dict): its
    entry, else the class's plain value."""
    cdef PyObject *found = PyDict_GetItemWithError(own, name)
    if found != NULL:
        return <object>found
    return class_lookup(type(obj), name)


# A call site's reading of objects' ``__dict__`` attribute, kept for the
# last class read there: the class, its version tag then, and the getset
# descriptor its ``__dict__`` resolves to (alive while the tag is the same:
# the class's dict, which holds it, is unchanged).
cdef struct DictSite:
    PyTypeObject *cls  # compared only: its version tag says it is the same
    unsigned int tag
    PyObject *descr


cdef inline object object_dict(object obj, DictSite *site):
    """``obj.__dict__`` where ``obj``'s class looks attributes up as
    ``object`` does and resolves ``__dict__`` to a getset descriptor (the
    one CPython gives a class with a ``__dict__``, or any other): what that
    lookup finds (a data descriptor, called before the instance's dict is
    looked at), its C getter called directly while the class keeps the
    version tag it had when ``site`` was filled.  Any other class, and the
    first read of a class, take the attribute itself."""
    cdef PyTypeObject *cls = <PyTypeObject *>Py_TYPE(obj)
    if cls == site.cls and site.tag != 0 and cls.tp_version_tag == site.tag:
        return (<PyGetSetDescrObject *>site.descr).d_getset.get(
            obj, (<PyGetSetDescrObject *>site.descr).d_getset.closure
        )
    fill_dict_site(cls, site)
    return obj.__dict__


cdef inline void fill_dict_site(PyTypeObject *cls, DictSite *site) noexcept:
    """``site`` set for ``cls`` when ``cls`` looks attributes up as
    ``object`` does and its ``__dict__`` is a getset descriptor with a
    getter, else cleared."""
    cdef unsigned int tag = cls.tp_version_tag
    cdef PyObject *found
    site.cls = NULL
    site.tag = 0
    site.descr = NULL
    if not looks_up_as_object(cls, tag):
        return
    found = _PyType_Lookup(cls, "__dict__")
    if found == NULL or Py_TYPE(<object>found) != &PyGetSetDescr_Type:
        return
    if (<PyGetSetDescrObject *>found).d_getset.get == NULL:
        return
    if cls.tp_version_tag != tag:
        return
    site.cls = cls
    site.tag = tag
    site.descr = found


cdef inline object live_state_dict(object state, SlotSite *obj_site, DictSite *dict_site):
    """``state.obj().__dict__`` for a state of stock's ``InstanceState``
    (the caller checks the class and that ``instance_dict`` is stock's
    ``attrgetter("__dict__")``): its ``obj`` slot read at its offset
    (``slot_value``), the weak reference's object without a Python call
    (``state_object``), its ``__dict__`` through ``object_dict``; None once
    the object is gone."""
    ref = slot_value(state, "obj", obj_site)
    if not PyWeakref_CheckRefExact(ref):
        obj = ref()
    else:
        obj = ref_target(ref)
    if obj is None:
        return None
    return object_dict(obj, dict_site)


cdef inline object manager_impl(object manager, object key, object dict_getitem,
                               ClassSite *getitem_site, SlotSite *impl_site):
    """``manager[key].impl`` of a class manager (a dict subclass, whose
    subscript CPython sends through a lookup and call of ``__getitem__``):
    while the manager's class keeps dict's own (``dict_getitem``), the key
    is read from the dict directly and the attribute's ``impl`` slot at its
    offset; a key not there goes the usual way."""
    if class_attribute_is(type(manager), "__getitem__", dict_getitem, getitem_site):
        attribute = (<dict>manager).get(key)
        if attribute is not None:
            return slot_value(attribute, "impl", impl_site)
    return manager[key].impl


cdef extern from "Python.h":
    # a cell's object, NULL when the cell is empty (no reference taken)
    PyObject *PyCell_GET_raw "PyCell_GET"(object cell)


cdef inline object cell_contents(object cell):
    """``cell.cell_contents`` of a closure's cell without the attribute
    lookup: its object, ValueError when it is empty (as the attribute)."""
    cdef PyObject *found = PyCell_GET_raw(cell)
    if found is NULL:
        raise ValueError("Cell is empty")
    return <object>found



# A call site's reads of the listener classes (has_listeners): each class's
# ``__bool__`` check and the slots it reads, kept as above.
cdef struct ListenerSites:
    ClassSite empty_bool
    SlotSite empty_parent
    ClassSite collection_bool
    SlotSite collection_listeners
    SlotSite collection_parent


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline bint has_listeners(object listeners, tuple kinds, ListenerSites *sites) except -1:
    """``bool(listeners)`` for a dispatch attribute: the lists the
    ``__bool__`` of SQLAlchemy's ``_EmptyListener`` and
    ``_ListenerCollection`` read, while that ``__bool__`` is theirs
    (``kinds``: ``turbosession.listeners.KINDS``), read at their slots
    (``sites``: the caller's, kept per class as ``class_attribute_is`` and
    ``slot_value`` keep theirs); anything else as ``bool()`` asks it.  The
    pure modules call ``listeners.has_listeners``."""
    kind = type(listeners)
    if kind is kinds[0] and class_attribute_is(kind, "__bool__", kinds[1], &sites.empty_bool):
        return bool(slot_value(listeners, "parent_listeners", &sites.empty_parent))
    if kind is kinds[2] and class_attribute_is(kind, "__bool__", kinds[3], &sites.collection_bool):
        return bool(slot_value(listeners, "listeners", &sites.collection_listeners)) or bool(
            slot_value(listeners, "parent_listeners", &sites.collection_parent)
        )
    return bool(listeners)


cdef inline void untrack_atoms(tuple values) noexcept:
    """Leaves a tuple of objects the collector never tracks (ints, strings,
    None) out of the collector's generations: what CPython's own collection
    does to such a tuple the first time it meets it (``_PyTuple_MaybeUntrack``,
    which untracks every tuple whose items cannot be tracked), done when it
    is made."""
    cdef Py_ssize_t i
    if not PyObject_GC_IsTracked(values):
        return
    for i in range(len(values)):
        if PyObject_IS_GC(values[i]):
            return
    PyObject_GC_UnTrack(<void *>values)
