"""Release qualification: a YAML matrix of variants run as an avocado job, with a report.

``matrix`` expands the YAML into variants, ``job`` runs them through avocado's Job API
(one avocado-instrumented test, ``tests/qualification/avocado_scenarios.py``, called
once per variant), ``avocado_test`` is that test's body (it calls
``harness.scenarios.runner.run_scenario``), and ``report`` turns avocado's results into
a per-variant report (HTML and JSON) next to avocado's own; with several QEMUs,
``compare`` puts their columns side by side and names every difference.
"""
