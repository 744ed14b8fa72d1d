"""The benchmark workloads and the ``python -m turbosession bench`` report.

They ship inside the package so that the report runs from an installed wheel;
the pytest-benchmark suite in the repository's bench/ imports the same
workloads rather than keeping a copy.
"""
