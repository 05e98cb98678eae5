"""Reproducible measurements behind ``tierflow bench``; each returns plain dicts a CLI can print as JSON."""
