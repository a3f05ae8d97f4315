"""avocado-instrumented wrapper: one test, run once per qualification matrix variant.

Started by ``python -m harness qualify --matrix FILE``, which passes each variant as the
``variant`` parameter; the body is ``harness.qualify.avocado_test.run_variant``, which
goes through ``harness.scenarios.runner.run_scenario`` like every other way of running
a scenario.
"""

from avocado import Test

from harness.qualify.avocado_test import run_variant


class ScenarioVariant(Test):
    """A registered scenario under one variant: vIOMMU options x arch x QEMU x kernel."""

    timeout = 1800

    def test(self) -> None:
        run_variant(self)
