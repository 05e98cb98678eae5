"""Builders and training scripts of the bundled demo models."""
