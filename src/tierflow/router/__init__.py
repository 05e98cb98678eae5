"""Routing: the task-resource matrix and SLA / energy policies (pure functions over measurements)."""
