"""The body of the avocado qualification test: run one variant (``harness.qualify.selftests``
sends a scenario to ``run_scenario``, a kernel-selftest cell to ``run_cell``).

The test's ``variant`` parameter is a ``Variant`` as JSON.  The guest's artifacts go to
``<avocado test logdir>/artifacts``; what the report needs (status, reason, QEMU and
kernel versions, seed, artifacts, repro bundle) goes to the test's whiteboard and to
``variant.json`` beside it.  A missing capability (QEMU property, image prerequisite)
cancels the test with that reason: the report lists it as skipped.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.qualify.matrix import Variant
from harness.qualify.report import verdict_info
from harness.qualify.selftests import run_variant as run_variant_verdict

INFO_FILE = "variant.json"
ARTIFACTS = "artifacts"


def identities(variant: Variant) -> dict[str, Any]:
    """QEMU binary and version, image key and kernel release, as far as known upfront."""
    from harness import images
    from harness.qemu.probe import probe, resolve_binary

    info: dict[str, Any] = {"qemu_binary": variant.qemu, "qemu_version": "", "kernel_release": ""}
    with contextlib.suppress(HarnessError, OSError):
        binary = resolve_binary(variant.arch, variant.qemu)
        info["qemu_binary"] = binary
        info["qemu_version"] = probe(binary).version_text
    with contextlib.suppress(Exception):
        image = images.lookup(variant.arch, variant.kernel.get("flavor", "default"))
        info["image_key"] = image.key
        if not variant.kernel.get("kernel"):
            info["kernel_release"] = image.kernel_release
    return info


class _NotATty:
    """Avocado's stream proxies lack ``isatty``; code that asks gets False."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _complete_streams() -> Iterator[None]:
    saved = sys.stdout, sys.stderr
    if not hasattr(sys.stdout, "isatty"):
        sys.stdout = _NotATty(sys.stdout)
    if not hasattr(sys.stderr, "isatty"):
        sys.stderr = _NotATty(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _publish(test: Any, info: dict[str, Any]) -> None:
    text = json.dumps(info, indent=1, default=str)
    test.whiteboard = text
    (Path(test.logdir) / INFO_FILE).write_text(text + "\n")


def run_variant(test: Any) -> None:
    """Run the variant in ``test.params["variant"]``; fail / cancel ``test`` accordingly."""
    from harness.images.errors import PrerequisiteError
    from harness.qemu.lifetime import follow_env_owner
    from harness.qemu.probe import MissingCapabilityError
    from harness.repro import BUNDLE_FILE

    follow_env_owner()  # the job dies (even by SIGKILL): this test, its runner and QEMU too
    variant = Variant.from_json(json.loads(test.params.get("variant")))
    artifacts = Path(test.logdir) / ARTIFACTS
    info: dict[str, Any] = {"variant": variant.to_json(), "artifacts": str(artifacts)}
    info.update(identities(variant))
    test.log.info("variant %s: %s", variant.id, json.dumps(variant.to_json()))
    try:
        with _complete_streams():
            verdict, extra = run_variant_verdict(variant, artifacts, test.log.info)
    except (MissingCapabilityError, PrerequisiteError) as exc:
        info.update(status="skipped", reason=str(exc))
        _publish(test, info)
        test.cancel(str(exc))
        return
    except BaseException as exc:
        info.update(status="error", reason=f"{type(exc).__name__}: {exc}".splitlines()[0])
        if (artifacts / BUNDLE_FILE).exists():
            info["repro_bundle"] = str(artifacts / BUNDLE_FILE)
        _publish(test, info)
        raise
    info.update(verdict_info(verdict), **extra)
    info.update(repro_bundle=verdict.facts.get("repro_bundle"), timings=verdict.timings)
    _publish(test, info)
    (Path(test.logdir) / "verdict.txt").write_text(
        verdict.table() + "\n" + verdict.summary() + "\n"
    )
    test.log.info("verdict:\n%s", verdict.table())
    if not verdict.passed:
        test.fail(verdict.summary())
