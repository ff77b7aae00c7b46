"""The PostgreSQL backend: the :class:`~castore.backend.Backend` contract in one schema.

A store location ``postgresql://…`` (or ``postgres://…``) selects it
(:mod:`castore.backends`); ``pip install 'castore[postgres]'`` brings its
driver, psycopg 3. The schema, the transaction of each operation and why
each is linearizable per key: docs/DESIGN.md, "The PostgreSQL backend".

Modules: ``location`` (the URL), ``schema`` (tables, version, creation,
upgrade), ``pool`` (a handle's connections, shared by its threads),
``connection`` (transactions, errors, reconnects), ``rows`` (rows to entries
and values), ``maintenance`` (check, gc, compaction, stats) and ``backend``.
"""
