"""Qualification matrices: a YAML file -> the list of variants the avocado job runs.

A matrix names its axes and the harness expands their product, keeping only the
combinations a scenario supports (its arches, the vIOMMU its guest has on each)::

    name: ci
    accel: auto                 # auto | kvm | tcg
    timeout: 900                # seconds per variant
    scenarios: [smoke-vfio-edu] # default: every registered tier >= 1 scenario
    params: {}                  # scenario parameters for every variant
    seed: 1234                  # default: a fresh seed per variant (recorded)
    qemu:                       # label -> null (installed) | {arch: binary} | a bin/ dir
      qemu-11: "11"             #   | "10" / "11" / "installed" (harness.qemu.installs)
      installed: null
    kernels:                    # label -> null (default image) | {flavor: F}
      default: null             #   | {kernel: PATH, initrd: PATH} | {tree: DIR}
      debug: {kernel_flavor: debug}  # (kernel_flavor also with tree: a debug build of it)
    viommus:                    # vtd | smmuv3 | none -> option sets
      vtd:
        options:
          scalable-flts: {scalable_mode: true, flts: true}
          scalable: {scalable_mode: true, flts: false}
      smmuv3:
        arches: [arm64]         # default: the arch the model belongs to
        options:
          nested: {stage: nested}
    exclude:                    # drop variants matching every key of an entry
      - {viommu: vtd, options: scalable, qemu: installed}
    kselftest:                  # the kernel's own selftests (harness kselftest), one
      suite: all                #   variant per vIOMMU configuration x QEMU x kernel
      arches: [x86_64, arm64]   # default: both
      configs: [vtd-legacy]     # default: every configuration of each arch
      tests: [vfio_pci_driver_test]  # BINARY or BINARY:FIXTURE.VARIANT.TEST; default all
      timeout: 3600             # seconds per variant (default: the matrix's timeout)

With a ``kselftest`` section, ``scenarios`` defaults to none and ``viommus`` may be left
out (the selftests name their own configurations, ``harness.kselftest.matrix``).  The
iommu suite drives the kernel's mock, not the vIOMMU: each arch's first configuration
runs it.

Variants are plain JSON (``Variant.to_json``) so that they travel as avocado test
parameters.  Everything here is pure: loading YAML is ``load_matrix``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.qemu.installs import is_named

MODEL_ARCHES = {"vtd": ("x86_64",), "smmuv3": ("arm64",), "none": ("x86_64", "arm64")}
QEMU_NAMES = {"x86_64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
TOP_KEYS = {
    "name", "description", "accel", "timeout", "scenarios", "params", "seed",
    "qemu", "kernels", "viommus", "exclude", "kselftest",
}  # fmt: skip
#: the scenario name of a kernel-selftest variant
KSELFTEST = "kselftest"
KSELFTEST_KEYS = ("suite", "arches", "configs", "tests", "timeout")
EXCLUDE_KEYS = ("scenario", "arch", "viommu", "options", "qemu", "kernel")
DEFAULT_TIMEOUT = 900.0


@dataclass(frozen=True)
class Variant:
    """One cell of the matrix: what ``run_scenario`` gets, and labels for the report."""

    id: str
    scenario: str
    arch: str
    viommu: str
    options_label: str
    viommu_options: dict[str, Any]
    qemu_label: str
    qemu: str | None
    kernel_label: str
    kernel: dict[str, Any]
    accel: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    timeout: float = DEFAULT_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Variant:
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"variant: {exc}") from None

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``harness.scenarios.runner.run_scenario``."""
        kwargs: dict[str, Any] = {
            "name": self.scenario,
            "arch": self.arch,
            "params": dict(self.params),
            "qemu": self.qemu,
            "accel": self.accel,
            "viommu_options": dict(self.viommu_options),
            "seed": self.seed,
            "flavor": self.kernel.get("flavor", "default"),
        }
        for key in ("kernel", "initrd"):
            if self.kernel.get(key):
                kwargs[key] = Path(self.kernel[key])
        if self.kernel.get("tree"):
            kwargs["kernel_tree"] = Path(self.kernel["tree"])
        if self.kernel.get("kernel_flavor", "default") != "default":
            kwargs["kernel_flavor"] = self.kernel["kernel_flavor"]
        return kwargs


@dataclass(frozen=True)
class Matrix:
    """A parsed matrix: its name and variants."""

    name: str
    description: str
    variants: tuple[Variant, ...]


def mapping_field(value: Any, where: str) -> dict[str, Any]:
    """A YAML mapping with string keys (``{}`` for None); ConfigError naming ``where`` else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _qemu_binary(entry: Any, arch: str, where: str) -> str | None:
    if entry is None:
        return None
    if is_named(entry):  # "installed", "10", "11": resolved by harness.qemu.probe
        return str(entry)
    if isinstance(entry, str):
        return str(Path(entry) / QEMU_NAMES[arch])
    if isinstance(entry, dict):
        unknown = set(entry) - set(QEMU_NAMES)
        if unknown:
            raise ConfigError(f"{where}: unknown arch {sorted(unknown)[0]!r} (x86_64, arm64)")
        value = entry.get(arch)
        return None if value is None else str(value)
    raise ConfigError(f"{where}: expected null, a bin/ directory or {{arch: binary}}")


_KERNEL_KEYS = ("flavor", "kernel", "initrd", "tree", "kernel_flavor")


def _kernel(entry: Any, where: str) -> dict[str, Any]:
    if entry is None:
        return {"flavor": "default"}
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: expected null, {{flavor: F}}, {{kernel: PATH}} or {{tree: DIR}}"
        )
    unknown = set(entry) - set(_KERNEL_KEYS)
    if unknown:
        known = ", ".join(_KERNEL_KEYS)
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key ({known})")
    if "initrd" in entry and "kernel" not in entry:
        raise ConfigError(f"{where}: initrd given without kernel")
    if "tree" in entry and "kernel" in entry:
        raise ConfigError(f"{where}: tree and kernel exclude each other")
    if "kernel_flavor" in entry and "kernel" in entry:
        raise ConfigError(f"{where}: kernel_flavor builds a kernel; kernel boots a given one")
    kernel = {str(k): str(v) for k, v in entry.items() if v is not None}
    kernel.setdefault("flavor", "default")
    return kernel


def _options(model: str, raw: Any, where: str) -> dict[str, dict[str, Any]]:
    from harness.profiles import make_viommu

    options = mapping_field(raw, where) or {"default": {}}
    for label, opts in options.items():
        opts = mapping_field(opts, f"{where}.{label}")
        options[label] = opts
        try:
            make_viommu(None if model == "none" else model, opts)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{label}: {exc}") from None
    return options


def _scenario_viommu(scenario: Any, arch: str) -> str:
    kind = scenario.guest(arch).viommu
    return "none" if kind in (None, "none") else str(kind)


def expand(data: Any, registry: Mapping[str, Any]) -> Matrix:
    """Expand a decoded matrix over the scenario ``registry``; ConfigError names bad keys."""
    top = mapping_field(data, "matrix")
    unknown = set(top) - TOP_KEYS
    if unknown:
        raise ConfigError(
            f"matrix.{sorted(unknown)[0]}: unknown key ({', '.join(sorted(TOP_KEYS))})"
        )
    accel = str(top.get("accel", "auto"))
    if accel not in ("auto", "kvm", "tcg"):
        raise ConfigError(f"matrix.accel: {accel!r} is not auto, kvm or tcg")
    try:
        timeout = float(top.get("timeout", DEFAULT_TIMEOUT))
    except (TypeError, ValueError):
        raise ConfigError(f"matrix.timeout: {top.get('timeout')!r} is not a number") from None
    params = mapping_field(top.get("params"), "matrix.params")
    seed = top.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"matrix.seed: {seed!r} is not an integer")

    names = top.get("scenarios")
    if names is None and KSELFTEST in top:
        names = []
    elif names is None:
        names = sorted(
            n for n, s in registry.items()
            if s.tier >= 1 and getattr(s.run, "__module__", "").startswith("harness.scenarios.")
        )  # fmt: skip
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("matrix.scenarios: expected a list of scenario names")
    for name in names:
        if name not in registry:
            known = ", ".join(sorted(registry)) or "none"
            raise ConfigError(f"matrix.scenarios: unknown scenario {name!r} (known: {known})")

    qemus = mapping_field(top.get("qemu"), "matrix.qemu") or {"installed": None}
    kernel_entries = mapping_field(top.get("kernels"), "matrix.kernels") or {"default": None}
    kernels = {
        label: _kernel(entry, f"matrix.kernels.{label}") for label, entry in kernel_entries.items()
    }
    viommus = mapping_field(top.get("viommus"), "matrix.viommus")
    if not viommus and names:
        raise ConfigError("matrix.viommus: at least one vIOMMU model (vtd, smmuv3, none)")
    models: list[tuple[str, tuple[str, ...], dict[str, dict[str, Any]]]] = []
    for model, raw in viommus.items():
        where = f"matrix.viommus.{model}"
        if model not in MODEL_ARCHES:
            raise ConfigError(f"{where}: unknown vIOMMU model (vtd, smmuv3, none)")
        entry = mapping_field(raw, where)
        extra = set(entry) - {"arches", "options"}
        if extra:
            raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown key (arches, options)")
        arches = tuple(entry.get("arches") or MODEL_ARCHES[model])
        bad = [a for a in arches if a not in MODEL_ARCHES[model]]
        if bad:
            raise ConfigError(f"{where}.arches: {model} has no {bad[0]} guests")
        models.append((model, arches, _options(model, entry.get("options"), f"{where}.options")))

    excludes = top.get("exclude") or []
    if not isinstance(excludes, list):
        raise ConfigError("matrix.exclude: expected a list of mappings")
    for i, rule in enumerate(excludes):
        rule = mapping_field(rule, f"matrix.exclude[{i}]")
        extra = set(rule) - set(EXCLUDE_KEYS)
        if extra:
            raise ConfigError(
                f"matrix.exclude[{i}].{sorted(extra)[0]}: unknown key ({', '.join(EXCLUDE_KEYS)})"
            )

    variants: list[Variant] = []
    cells = itertools.product(names, models, qemus.items(), kernels.items())
    for name, (model, arches, options), (qlabel, qentry), (klabel, kernel) in cells:
        scenario = registry[name]
        for arch in arches:
            if arch not in scenario.arches or _scenario_viommu(scenario, arch) != model:
                continue
            for olabel, opts in options.items():
                labels = {"scenario": name, "arch": arch, "viommu": model, "options": olabel,
                          "qemu": qlabel, "kernel": klabel}  # fmt: skip
                if _excluded(labels, excludes):
                    continue
                variants.append(
                    Variant(
                        id=_variant_id(f"{name}.{arch}.{model}-{olabel}", labels, qemus, kernels),
                        scenario=name,
                        arch=arch,
                        viommu=model,
                        options_label=olabel,
                        viommu_options=opts,
                        qemu_label=qlabel,
                        qemu=_qemu_binary(qentry, arch, f"matrix.qemu.{qlabel}"),
                        kernel_label=klabel,
                        kernel=kernel,
                        accel=accel,
                        params=params,
                        seed=seed,
                        timeout=timeout,
                    )
                )
    if KSELFTEST in top:
        variants += _kselftest_variants(
            top[KSELFTEST], qemus, kernels, excludes, accel=accel, timeout=timeout
        )
    if not variants:
        raise ConfigError("matrix: expands to no variant (no scenario fits these vIOMMUs/arches)")
    return Matrix(str(top.get("name", "matrix")), str(top.get("description", "")), tuple(variants))


def _variant_id(
    base: str, labels: dict[str, str], qemus: Mapping[str, Any], kernels: Mapping[str, Any]
) -> str:
    """``base``, then the QEMU and kernel labels when the matrix has more than one of them."""
    vid = base + (f".qemu-{labels['qemu']}" if len(qemus) > 1 else "")
    return vid + (f".kernel-{labels['kernel']}" if len(kernels) > 1 else "")


def _excluded(labels: dict[str, str], excludes: list[dict[str, Any]]) -> bool:
    """Whether some ``exclude`` rule matches every one of its keys in ``labels``."""
    return any(all(str(labels[k]) == str(v) for k, v in rule.items()) for rule in excludes)


def _kselftest_variants(
    raw: Any,
    qemus: dict[str, Any],
    kernels: dict[str, dict[str, Any]],
    excludes: list[dict[str, Any]],
    *,
    accel: str,
    timeout: float,
) -> list[Variant]:
    """The ``kselftest`` section's variants: configuration x QEMU x kernel."""
    from harness.kselftest.matrix import MATRIX, select

    where = f"matrix.{KSELFTEST}"
    entry = mapping_field(raw, where)
    extra = set(entry) - set(KSELFTEST_KEYS)
    if extra:
        raise ConfigError(f"{where}.{sorted(extra)[0]}: unknown key ({', '.join(KSELFTEST_KEYS)})")
    suite = str(entry.get("suite", "all"))
    tests = entry.get("tests") or []
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise ConfigError(f"{where}.tests: expected a list of BINARY[:TEST] names")
    try:
        select(suite, tests)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    arches = entry.get("arches") or list(MATRIX)
    if not isinstance(arches, list) or any(a not in MATRIX for a in arches):
        raise ConfigError(f"{where}.arches: expected a list of {', '.join(MATRIX)}")
    labels = entry.get("configs")
    known = {c.label for arch in arches for c in MATRIX[arch]}
    if labels is not None:
        if not isinstance(labels, list) or not labels:
            raise ConfigError(f"{where}.configs: expected a list of configuration labels")
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ConfigError(
                f"{where}.configs: unknown configuration {unknown[0]!r}"
                f" (known: {', '.join(sorted(known))})"
            )
    try:
        timeout = float(entry.get("timeout", timeout))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.timeout: {entry.get('timeout')!r} is not a number") from None
    for label, kernel in kernels.items():
        if kernel.get("initrd"):
            raise ConfigError(
                f"matrix.kernels.{label}: selftests boot the image's initramfs, not an initrd"
            )
    variants = []
    for arch in arches:
        chosen = [c for c in MATRIX[arch] if labels is None or c.label in labels]
        for (qlabel, qentry), (klabel, kernel) in itertools.product(qemus.items(), kernels.items()):
            for index, config in enumerate(chosen):
                names = {"scenario": KSELFTEST, "arch": arch, "viommu": config.kind,
                         "options": config.label, "qemu": qlabel, "kernel": klabel}  # fmt: skip
                if _excluded(names, excludes):
                    continue
                variants.append(
                    Variant(
                        id=_variant_id(f"{KSELFTEST}.{arch}.{config.label}", names, qemus, kernels),
                        scenario=KSELFTEST,
                        arch=arch,
                        viommu=config.kind,
                        options_label=config.label,
                        viommu_options=dict(config.options),
                        qemu_label=qlabel,
                        qemu=_qemu_binary(qentry, arch, f"matrix.qemu.{qlabel}"),
                        kernel_label=klabel,
                        kernel=kernel,
                        accel=accel,
                        params={"suite": suite, "tests": list(tests), "mock": index == 0},
                        timeout=timeout,
                    )
                )
    return variants


def load_matrix(path: Path, registry: Mapping[str, Any] | None = None) -> Matrix:
    """Read a YAML matrix and expand it (over the full scenario registry by default)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such matrix file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if registry is None:
        from harness.scenarios.base import load_all

        registry = load_all()
    try:
        return expand(data, registry)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
