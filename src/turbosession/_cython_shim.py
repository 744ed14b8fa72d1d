"""The few names of Cython's pure-Python mode that the hot paths use.

Each hot path imports ``cython``; where Cython is not installed (a pure
install, or a compiled wheel without Cython at run time) it gets this module
instead.  Uncompiled, every decorator leaves its function as it is and every
declaration is a plain value, so the module runs as ordinary Python.
"""

compiled = False
NULL = None

# C types named in cython.declare() / cython.cast() outside annotations
bint = bool
int = int  # noqa: A001
Py_ssize_t = int
double = float
uint = ulonglong = int


def _unchanged(fn):
    return fn


cclass = cfunc = ccall = inline = final = _unchanged


def locals(**types):  # noqa: A001
    return _unchanged


def returns(type_):
    return _unchanged


def exceptval(value=None, *, check=False):
    return _unchanged


def declare(type_=None, value=None, **kw):
    return value


def cast(type_, value, *, typecheck=False):
    return value
