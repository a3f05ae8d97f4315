"""Nesting scenarios: host halves (boot config, QMP, checks) and guest halves (``guest``)."""
