"""Values turbosession derives from a mapper, kept with its memoized values.

SQLAlchemy resets a mapper's memoized attributes when mappers are configured
or changed; ``Mapper._memoized_values`` itself is not cleared.  So each value
is stored beside the memoized attribute it derives from (its *source*) and
rebuilt when that attribute is a new object.
"""


def derived(mapper, key, source, build):
    """``build(mapper)``, kept in ``mapper._memoized_values[key]`` while
    ``source`` (one of the mapper's memoized attributes) is the same object."""
    memo = mapper._memoized_values
    entry = memo.get(key)
    if entry is not None and entry[0] is source:
        return entry[1]
    value = build(mapper)
    memo[key] = (source, value)
    return value
