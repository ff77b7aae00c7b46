"""Damage matrix: damage every byte of a small store, one copy per case, and judge every answer.

Shared by ``tests/integration/test_damage_matrix.py`` (a seeded sample) and
``tools/damage_matrix.py`` (the whole matrix). Modules, lowest layer first:

* ``answers``: what calls answered, reduced to what must match (pure data);
* ``oracle``: the rules that judge a damaged copy against the pristine store;
* ``scenario``: the pristine store, and the calls run on every copy;
* ``cases``: the damage shapes, and one case run end to end;
* ``matrix``: many cases (optionally sampled, optionally in processes), counted.
"""

from tests.damage.matrix import MatrixReport, run_matrix

__all__ = ["MatrixReport", "run_matrix"]
