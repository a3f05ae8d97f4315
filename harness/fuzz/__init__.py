"""A model-based fuzzer of the nesting uAPI: hypothesis rules on the host, steps in a guest.

``model`` predicts every call's outcome, ``rules`` is the hypothesis state machine,
``runner`` runs it against a guest under a time budget, ``coverage`` says what was
reached (ioctl x outcome, against the errno contract), ``reproducer`` writes a shrunk
failure as a script and a repro bundle of the ``fuzz-replay`` scenario (``replay``).
The guest half is ``harness.scenarios.guest.fuzz``.  See docs/FUZZ.md.
"""
