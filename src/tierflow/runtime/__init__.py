"""Executing models on ONNX Runtime: providers, sessions, generation."""
