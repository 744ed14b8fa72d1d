"""What turbosession reads of a class's attributes, decided once per class."""


def data_descriptor(cls, name):
    """Whether ``name``, looked up on ``cls`` as on its instances (the first
    class of its MRO that defines it), is a data descriptor: one that
    answers ``obj.name`` and ``obj.name = value`` ahead of the instance's
    ``__dict__``."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            kind = type(klass.__dict__[name])
            return hasattr(kind, "__set__") or hasattr(kind, "__delete__")
    return False
