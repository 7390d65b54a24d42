"""Throughput regression suite: remus against bare pyzmq references, measured in the same run.

``python -m perf`` runs it and prints one table; see ``perf/README.md``.
"""
