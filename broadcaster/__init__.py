"""Event-streaming dual-write broadcaster."""
