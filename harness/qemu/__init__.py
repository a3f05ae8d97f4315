"""QEMU machines: description -> argv, capability probing, lifecycle, QMP and traces."""
