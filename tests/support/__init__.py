"""Shared test support: builders, rows, media, templates and servers (no tests here)."""
