# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Topological sort of flush actions, compiled twin of ``_topological_py``.

The same algorithms as the pure twin (see its docstring for why they give
stock ``sqlalchemy.util.topological``'s output exactly): nodes are numbered
once through a dict, and the per-edge and per-node loops then run over C
int arrays.
"""

from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

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


cdef class _Edges:
    """Edges between numbered items: ``src[k] -> dst[k]`` for k < count."""

    cdef Py_ssize_t count, capacity
    cdef int* src
    cdef int* dst

    def __dealloc__(self):
        PyMem_Free(self.src)
        PyMem_Free(self.dst)

    cdef add(self, int parent, int child):
        cdef int* grown
        if self.count == self.capacity:
            self.capacity = self.capacity * 2 + 64
            grown = <int*>PyMem_Realloc(self.src, self.capacity * sizeof(int))
            if grown == NULL:
                raise MemoryError()
            self.src = grown
            grown = <int*>PyMem_Realloc(self.dst, self.capacity * sizeof(int))
            if grown == NULL:
                raise MemoryError()
            self.dst = grown
        self.src[self.count] = parent
        self.dst[self.count] = child
        self.count += 1


cdef inline int _number(dict index, object node):
    """The number of ``node`` in ``index``, -1 when it is not an item."""
    cdef PyObject* found = PyDict_GetItem(index, node)
    if found == NULL:
        return -1
    return <int><object>found


cdef tuple _rounds(tuples, list items):
    """Stock's rounds of ``items``, and whether some items were never ready."""
    cdef dict index = {}
    cdef Py_ssize_t n_items = len(items), k
    cdef int size = 0, node, parent, child, below, head = 0, tail = 0, deepest = -1
    cdef int* position_of = NULL  # position in items -> number
    cdef int* waiting = NULL
    cdef int* level = NULL
    cdef int* ready = NULL
    cdef _Edges edges = _Edges()
    cdef _Csr graph = _Csr()
    cdef object item, pair
    cdef list rounds
    try:
        position_of = _ints(n_items, 0)
        for k in range(n_items):
            item = items[k]
            node = _number(index, item)
            if node < 0:
                node = size
                index[item] = size
                size += 1
            position_of[k] = node

        waiting = _ints(size, 0)
        for pair in tuples:
            if type(pair) is tuple and PyTuple_GET_SIZE(pair) == 2:
                parent = _number(index, <object>PyTuple_GET_ITEM(pair, 0))
                child = _number(index, <object>PyTuple_GET_ITEM(pair, 1))
            else:
                parent_obj, child_obj = pair
                parent = _number(index, parent_obj)
                child = _number(index, child_obj)
            if parent < 0 or child < 0:
                continue
            # a repeated edge counts twice here and is released twice
            edges.add(parent, child)
            waiting[child] += 1
        graph.build(size, edges.src, edges.dst, edges.count)

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
            if below > deepest:
                deepest = below - 1
            for k in range(graph.start[node], graph.start[node + 1]):
                child = graph.child[k]
                if level[child] < below:
                    level[child] = below
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready[tail] = child
                    tail += 1

        rounds = [[] for _ in range(deepest + 1)]
        for k in range(n_items):
            node = position_of[k]
            if waiting[node] == 0:
                (<list>rounds[level[node]]).append(items[k])
        return rounds, tail < size
    finally:
        PyMem_Free(position_of)
        PyMem_Free(waiting)
        PyMem_Free(level)
        PyMem_Free(ready)


def _circular_error(pairs, tuples, allitems):
    # stock's child -> parents dict, rebuilt the same way so that the
    # ``edges`` set is built in the same order; stock reads ``tuples`` again
    # for the cycles (an iterator is exhausted by then)
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
    # the edges are needed again on a cycle: keep them if read only once
    pairs = list(tuples) if iter(tuples) is tuples else tuples
    rounds, stuck = _rounds(pairs, list(allitems))
    yield from rounds
    if stuck:
        raise _circular_error(pairs, tuples, allitems)


def sort(tuples, allitems, deterministic_order=True):
    """Yield items in dependency order (``deterministic_order`` is ignored,
    as stock ignores it: the order always follows ``allitems``)."""
    cdef list round_
    pairs = list(tuples) if iter(tuples) is tuples else tuples
    rounds, stuck = _rounds(pairs, list(allitems))
    for round_ in rounds:
        yield from round_
    if stuck:
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
