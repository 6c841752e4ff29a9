"""Benchmarks of flows side by side with its peers (never part of ``make test``).

``python -m bench`` (``make bench``) runs every case for every system against the local
broker and database and writes ``bench/results/latest.json``, ``BENCHMARKS.md`` and the
charts in ``bench/results/``; ``--quick`` is a small run for development; ``--case`` and
``--system`` pick single runs. See :mod:`bench.harness` for what is measured and how.

Nothing here asserts on time: a benchmark reports, it never fails a build.
"""
