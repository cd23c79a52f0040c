"""Benchmarks. Each prints figures (JSON lines); none asserts timings.

The harness: ``python -m loadtests <scenario> [options]`` (see
``loadtests/__main__.py``), scenarios in ``loadtests/scenarios/``: sustained,
dual-vs-single, checksum-cost, reconcile, store, failover, raw-limit, and
``all``. The older entry points stay runnable and back the wrappers:
``python -m loadtests.bench_dualwrite``, ``loadtests.bench_store`` and
``loadtests.bench_failover``; ``loadtests.subscriber`` and
``loadtests.raw_peer`` are the processes on the receiving end.
"""
