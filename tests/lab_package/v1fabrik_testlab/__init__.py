"""A tiny lab package registering its own model and measure functions with v1fabrik (used by the registry and measure tests)."""
