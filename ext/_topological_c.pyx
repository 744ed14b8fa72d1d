# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Topological sort of flush actions, compiled twin of ``_topological_py``.

The same algorithms as the pure twin (see its docstring for why they give
stock ``sqlalchemy.util.topological``'s output exactly): nodes are numbered
once through a dict, and the per-edge and per-node loops then run over C
int arrays.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc

from sqlalchemy.exc import CircularDependencyError

__all__ = ["sort", "sort_as_subsets", "find_cycles"]


def _is_compiled():
    return True


cdef int* _ints(Py_ssize_t count, int fill) except NULL:
    cdef int* block = <int*>PyMem_Malloc((count + 1) * sizeof(int))
    cdef Py_ssize_t i
    if block == NULL:
        raise MemoryError()
    for i in range(count + 1):
        block[i] = fill
    return block


cdef class _Csr:
    """Adjacency lists of numbered nodes, children in the order given."""

    cdef int size
    cdef int* start  # children of n are child[start[n]:start[n + 1]]
    cdef int* child

    def __dealloc__(self):
        PyMem_Free(self.start)
        PyMem_Free(self.child)

    cdef build(self, int size, int* src, int* dst, Py_ssize_t count):
        cdef Py_ssize_t k
        cdef int n, total = 0, degree
        self.size = size
        self.start = _ints(size, 0)
        self.child = _ints(count, 0)
        for k in range(count):
            self.start[src[k]] += 1
        for n in range(size + 1):
            degree = self.start[n]
            self.start[n] = total
            total += degree
        for k in range(count):
            # start[src] walks forward while filling, then is moved back
            self.child[self.start[src[k]]] = dst[k]
            self.start[src[k]] += 1
        for n in range(size, 0, -1):
            self.start[n] = self.start[n - 1]
        self.start[0] = 0


cdef list _levels(list pairs, list items):
    """Round of every position of ``items``; ``None`` for items never ready."""
    cdef dict index = {}
    cdef Py_ssize_t n_items = len(items), n_pairs = len(pairs), count = 0, k
    cdef int size = 0, node, child, below, head = 0, tail = 0
    cdef int* src = NULL
    cdef int* dst = NULL
    cdef int* waiting = NULL
    cdef int* level = NULL
    cdef int* ready = NULL
    cdef _Csr graph = _Csr()
    cdef object item, found, parent_obj, child_obj
    cdef list result
    for item in items:
        if item not in index:
            index[item] = size
            size += 1
    try:
        src = _ints(n_pairs, 0)
        dst = _ints(n_pairs, 0)
        waiting = _ints(size, 0)
        for parent_obj, child_obj in pairs:
            found = index.get(parent_obj)
            if found is None:
                continue
            node = found
            found = index.get(child_obj)
            if found is None:
                continue
            child = found
            # a repeated edge counts twice here and is released twice
            src[count] = node
            dst[count] = child
            waiting[child] += 1
            count += 1
        graph.build(size, src, dst, count)

        level = _ints(size, 0)
        ready = _ints(size, 0)
        for node in range(size):
            if waiting[node] == 0:
                ready[tail] = node
                tail += 1
        while head < tail:
            node = ready[head]
            head += 1
            below = level[node] + 1
            for k in range(graph.start[node], graph.start[node + 1]):
                child = graph.child[k]
                if level[child] < below:
                    level[child] = below
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready[tail] = child
                    tail += 1

        result = [None] * n_items
        for k in range(n_items):
            node = index[items[k]]
            if waiting[node] == 0:
                result[k] = level[node]
        return result
    finally:
        PyMem_Free(src)
        PyMem_Free(dst)
        PyMem_Free(waiting)
        PyMem_Free(level)
        PyMem_Free(ready)


cdef list _rounds(list items, list levels):
    cdef list rounds = []
    cdef Py_ssize_t k, level
    cdef object found
    for k in range(len(items)):
        found = levels[k]
        if found is None:
            continue
        level = found
        while len(rounds) <= level:
            rounds.append([])
        (<list>rounds[level]).append(items[k])
    return rounds


def _circular_error(list pairs, tuples, allitems):
    # stock's child -> parents dict, rebuilt the same way so that the
    # ``edges`` set is built in the same order
    cdef dict parents_of = {}
    cdef object parents
    for parent, child in pairs:
        parents = parents_of.get(child)
        if parents is None:
            parents_of[child] = parents = set()
        (<set>parents).add(parent)
    return CircularDependencyError(
        "Circular dependency detected.",
        find_cycles(tuples, allitems),
        {(right, left) for left in parents_of for right in parents_of[left]},
    )


def sort_as_subsets(tuples, allitems):
    """Yield lists of items in dependency rounds; see ``_topological_py``."""
    cdef list pairs = [(parent, child) for parent, child in tuples]
    cdef list items = list(allitems)
    cdef list levels = _levels(pairs, items)
    yield from _rounds(items, levels)
    if None in levels:
        raise _circular_error(pairs, tuples, allitems)


def sort(tuples, allitems, deterministic_order=True):
    """Yield items in dependency order (``deterministic_order`` is ignored,
    as stock ignores it: the order always follows ``allitems``)."""
    cdef list pairs = [(parent, child) for parent, child in tuples]
    cdef list items = list(allitems)
    cdef list levels = _levels(pairs, items)
    cdef list round_
    for round_ in _rounds(items, levels):
        yield from round_
    if None in levels:
        raise _circular_error(pairs, tuples, allitems)


def find_cycles(tuples, allitems):
    """The set of nodes that lie on a cycle; ``allitems`` is unused, as in stock."""
    cdef dict children_of = {}
    cdef object children, parent_obj, child_obj
    for parent_obj, child_obj in tuples:
        children = children_of.get(parent_obj)
        if children is None:
            children_of[parent_obj] = children = set()
        (<set>children).add(child_obj)
    # stock visits nodes in the order of set(its defaultdict); set() presizes
    # from an exact dict only, so iterate the keys to build the same table
    cdef list order = list(set(iter(children_of)))
    cdef int size = len(order)
    cdef dict index = {key: i for i, key in enumerate(order)}
    cdef Py_ssize_t n_edges = 0, k
    cdef int node, top, child, depth = 0, start
    cdef bint pushed
    cdef object found
    cdef set output = set()
    cdef _Csr graph = _Csr()
    cdef int* src = NULL
    cdef int* dst = NULL
    cdef int* stamp = NULL
    cdef int* stack_pos = NULL
    cdef int* resume = NULL
    cdef int* stack = NULL
    cdef char* in_output = NULL
    for node in range(size):
        n_edges += len(<set>children_of[order[node]])
    try:
        src = _ints(n_edges, 0)
        dst = _ints(n_edges, 0)
        n_edges = 0
        for node in range(size):
            for child_obj in <set>children_of[order[node]]:
                found = index.get(child_obj)
                if found is not None:
                    src[n_edges] = node
                    dst[n_edges] = found
                    n_edges += 1
        graph.build(size, src, dst, n_edges)

        stamp = _ints(size, -1)
        stack_pos = _ints(size, -1)
        resume = _ints(size, 0)
        stack = _ints(size, 0)
        in_output = <char*>PyMem_Malloc(size + 1)
        if in_output == NULL:
            raise MemoryError()
        for node in range(size):
            in_output[node] = 0

        for start in range(size):
            stamp[start] = start
            stack[0] = start
            depth = 1
            stack_pos[start] = 0
            resume[start] = graph.start[start]
            while depth:
                top = stack[depth - 1]
                pushed = False
                while resume[top] < graph.start[top + 1]:
                    child = graph.child[resume[top]]
                    resume[top] += 1
                    if stack_pos[child] >= 0:
                        for k in range(stack_pos[child], depth):
                            node = stack[k]
                            if not in_output[node]:
                                in_output[node] = 1
                                output.add(order[node])
                    if stamp[child] != start:
                        stamp[child] = start
                        stack_pos[child] = depth
                        resume[child] = graph.start[child]
                        stack[depth] = child
                        depth += 1
                        pushed = True
                        break
                if not pushed:
                    depth -= 1
                    stack_pos[stack[depth]] = -1
        return output
    finally:
        PyMem_Free(src)
        PyMem_Free(dst)
        PyMem_Free(stamp)
        PyMem_Free(stack_pos)
        PyMem_Free(resume)
        PyMem_Free(stack)
        PyMem_Free(in_output)
