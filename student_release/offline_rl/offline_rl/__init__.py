"""Offline reinforcement learning: the course's reference implementation.

Layers, bottom to top (a module only imports from layers below it):

* ``envs``, ``planning`` — gymnasium environments and exact dynamic programming (ground truth).
* ``datasets``, ``cartpole``, ``plotting`` — fixed datasets, behavior policies, drawings.
* ``algorithms`` — what students implement (BC, naive offline Q, CQL, BCQ). Never shipped.
* ``experiments``, ``widgets`` — take algorithms as arguments, so a notebook can run them on
  the student's own code.

Importing this package registers the GridWorld environments with gymnasium and, inside a
notebook kernel, how otter's check results are shown (``checks``: display only).
"""

from offline_rl import checks as _checks
from offline_rl import envs as _envs  # noqa: F401  (registers gymnasium ids)

_checks.install()

__version__ = "0.1.0"
