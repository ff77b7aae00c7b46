"""Parts of ``tools/bench.py``, one responsibility each (imports only point down the list).

* ``measure``: the method: timed batches, rotated repetitions, medians, ratios.
* ``peers``: the stores under test (castore, sqlite3, naive files) and their values.
* ``cas``: the worker processes of the compare-and-swap workload.
* ``targets``: goals (thresholds) and the PASS/FAIL rows they yield.
* ``report``: the tables and header/footer lines the benchmark prints.
* ``machine``: file-system probes, scratch directory choice and cleanup.
* ``context``: the run's configuration and state, and the shape of a table row.
* ``reads`` and ``writes``: the timed workloads.
* ``workloads``: the table of workloads and their targets.
"""
