"""Chaos trials: try hard to break "exactly once" and "nothing lost", then count.

`python -m chaos` (or `make chaos`) runs the faults one after the other on the local PostgreSQL, in a
database of its own (`gw_chaos_<hex>`, dropped at the end), and prints one line per fault:

    fault | trials run | deliveries expected | delivered | duplicates | lost | extras

common.py holds what the faults share (database, seeding, gateway processes, counting); kill9.py,
platform.py and pg_restart.py are the faults. tests/test_chaos_fast.py runs small versions of them.
"""
