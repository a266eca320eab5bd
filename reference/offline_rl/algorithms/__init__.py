"""What students implement (BC, naive offline Q, CQL, BCQ, FQE) and the experiments that run it.

Never shipped to students. Import the submodules directly, e.g.
``from offline_rl.algorithms.tabular import tabular_cql``.
"""
