"""Parts of ``tools/bench.py``, one responsibility each (imports only point down the list).

* ``measure``: the method: timed batches, rotated repetitions, medians, ratios.
* ``peers``: the stores under test (castore, sqlite3, naive files, sqlite3+history and
  the shared harness's sqlite peers) and their values.
* ``cas``: the worker processes of the compare-and-swap workloads, and how they are run.
* ``targets``: goals (thresholds) and the PASS/FAIL rows they yield.
* ``report``: the tables and header/footer lines the benchmark prints.
* ``machine``: file-system probes, scratch directory choice and cleanup.
* ``context``: the run's configuration and state, and the shape of a table row.
* ``reads`` and ``writes``: the timed workloads 1-5; ``issue10`` (6) and ``parallel``
  (7): issue 10's castore-vs-peer rows.
* ``workloads``: the table of workloads and their targets.
"""
