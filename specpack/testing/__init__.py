"""Helpers for tests and demos: tiny models built locally, no model hub."""
