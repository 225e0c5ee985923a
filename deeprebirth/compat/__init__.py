"""Compatibility helpers for third-party packages."""
