"""``broadcaster demo``: the whole system on embedded defaults (SPEC 9).

:mod:`.script` runs the demo's script; :mod:`.remote` is the subscriber it
runs in a child process, as a consumer elsewhere would.
"""

from .script import DemoSummary, run_demo

__all__ = ["DemoSummary", "run_demo"]
