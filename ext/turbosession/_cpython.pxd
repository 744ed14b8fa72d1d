# CPython C API that Cython's own cpython/*.pxd do not declare, for the hot
# paths that cimport it (compiled only: the pure implementation never reads it).

from cpython.object cimport PyObject, PyTypeObject
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

    # exactly a weakref.ref, no subclass (a macro Cython's cpython.weakref lacks)
    bint PyWeakref_CheckRefExact(object ob)

    # a bound method (Cython's cpython.method declares Python 2's signature)
    object PyMethod_New(object func, object self)

    # dict lookups with a hash computed once (CPython's exported private API,
    # what dict.get and dict.__setitem__ call after hashing the key)
    PyObject *_PyDict_GetItem_KnownHash(object mp, object key, Py_hash_t hash) except? NULL
    int _PyDict_SetItem_KnownHash(object mp, object key, object item, Py_hash_t hash) except -1

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


cdef inline void store_slot(object obj, Py_ssize_t offset, object value) noexcept:
    """What a ``T_OBJECT_EX`` member descriptor's ``__set__`` stores at
    ``offset`` of ``obj`` (PyMember_SetOne), without the attribute lookup."""
    cdef PyObject **slot = <PyObject **>((<char *><PyObject *>obj) + offset)
    cdef PyObject *old = slot[0]
    Py_INCREF(value)
    slot[0] = <PyObject *>value
    Py_XDECREF(old)



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
