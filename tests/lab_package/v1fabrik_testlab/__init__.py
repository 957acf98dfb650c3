"""A tiny lab package registering its own model function with v1fabrik (used by the registry tests)."""
