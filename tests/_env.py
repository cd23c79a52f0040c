"""What a clean test environment leaves out: every variable with one of these
prefixes is a broadcaster setting (SPEC 4), removed before each test (and by
module-scoped fixtures that run before the per-test cleanup)."""

from __future__ import annotations

__all__ = ["SETTING_PREFIXES"]

SETTING_PREFIXES = (
    "DUAL_WRITE_",
    "ADAPTER_",
    "BREAKER_",
    "RECONCILE_",
    "WEBSOCKET_",
    "SUPABASE_",
    "REALTIME_",
    "STORE_",
    "ADMIN_",
    "BROADCASTER_",
    "EVENT_",
    "LOG_",
    "INSTANCE_",
)
