"""The qualification matrix spread over a fleet of hosts, on Dask distributed.

``spec`` parses the fleet file (pure), ``capabilities`` says what a host can run and
routes matrix cells to hosts (resources; pure but for ``probe_host``), ``tls`` makes the
per-run certificates, ``cluster`` starts the scheduler on the controller and one worker
per host over SSH (``worker`` is the remote entry point), ``cell`` is the task a worker
runs for one matrix cell, ``merge`` turns the cells' results into one JUnit, an
avocado-style ``results.json`` and the qualification report, ``run`` drives a fleet run
and ``deploy`` installs this checkout's wheel on each host.
"""
