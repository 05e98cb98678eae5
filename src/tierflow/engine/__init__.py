"""Orchestration: what drives a request across tiers from the device.

``tierflow.load`` (the right target of a package, or the cloud proxy), the split runner
and the split engine (plan, run, learn, re-plan). Later: layer-sharded generation and
the router's execution.
"""
