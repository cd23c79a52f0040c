"""The public API: everything in ``broadcaster.__all__`` exists, and every
module's ``__all__`` names only what it defines."""

from __future__ import annotations

import importlib
import pkgutil

import broadcaster


def test_package_exports_exist() -> None:
    for name in broadcaster.__all__:
        assert hasattr(broadcaster, name), name
    assert len(set(broadcaster.__all__)) == len(broadcaster.__all__)


def test_package_exports_the_documented_api() -> None:
    for name in (
        "Broadcaster",
        "Receipt",
        "Settings",
        "load_settings",
        "Category",
        "Event",
        "BroadcasterError",
        "InvalidEvent",
        "StoreUnavailable",
        "ConfigError",
        "AdminServer",
        "create_app",
        "run_service",
        "RuntimeFlags",
        "BroadcasterMetrics",
        "AuditEntry",
        "run_on_loop",
    ):
        assert name in broadcaster.__all__


def test_every_module_declares_all_and_it_resolves() -> None:
    for info in pkgutil.walk_packages(broadcaster.__path__, prefix="broadcaster."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{info.name} has no __all__"
        for name in exported:
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"
