"""Benchmarks. Each prints figures (JSON lines); none asserts timings.

One harness: ``python -m loadtests <scenario> [options]`` (see
``loadtests/__main__.py``), one module per scenario in
``loadtests/scenarios/``, and ``all``. The helpers they share are the
underscored modules (``_common``, ``_stack`` with ``_phases``, ``_stores``) and
:mod:`broadcaster.spawn`; ``loadtests.subscriber``, ``loadtests.raw_peer``,
``loadtests.producer_child``, ``loadtests.realtime_child`` and
``loadtests.reconcile_child`` are the processes the scenarios start.
"""
