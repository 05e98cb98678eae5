"""Measuring models and tiers: the unit graph of an ONNX model, per-unit times on ONNX Runtime.

What the planner reads is built here; the planner itself stays pure (it imports neither
ONNX Runtime nor the transport).
"""
