"""``broadcaster demo``: the whole system on embedded defaults (docs/cli.md).

:mod:`.script` runs the demo's script, with its phases in :mod:`.outage` and
:mod:`.reconciling` on the shared state and timings of :mod:`.timeline`;
:mod:`.stream` publishes its events, :mod:`.console` keeps the terminal
readable, :mod:`.summary` prints the closing table, and :mod:`.remote` is the
subscriber it runs in a child process, as a consumer elsewhere would.
"""

from .script import DemoSummary, run_demo

__all__ = ["DemoSummary", "run_demo"]
