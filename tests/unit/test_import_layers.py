"""The package imports one way: no cycles, and no module imports a layer above its own.

Every ``import`` / ``from ... import`` in every module of ``harness/`` counts, wherever it
stands: at module level, inside a function (a function-level import that only dodges a
cycle is still a cycle), or under ``if TYPE_CHECKING``.  Importing ``a.b.c`` also runs
the package ``a.b`` (its ``__init__``), so that counts as importing ``a.b`` too (when that
``__init__`` imports anything of ours), except for the importer's own packages.

Layers, lowest first; a module may import its own layer and the ones below.  The data
path reads one way: description -> argv -> machine -> guest/agent -> driver -> checkers
-> verdict -> report.

====  ============  ================================================================
rank  layer         modules
====  ============  ================================================================
0     foundation    ``harness`` (the package itself), ``errors``, ``cachedir``,
                    ``artifacts``, ``host``
1     formats       pure data models and decoders: ``uapi``, ``vtd``, ``smmuv3``,
                    ``pgtable``, ``klog``, ``firmware.acpi`` / ``iort`` / ``capability``,
                    ``images.cpio``
2     description   ``qemu.description``, ``profiles``, ``tier3.passthrough``
3     argv          ``qemu.argv`` / ``accel`` / ``qmp`` / ``rundir`` / ``leaks`` /
                    ``lifetime``
4     machine       ``qemu`` (the rest: ``machine``, ``trace``)
5     images        ``images`` (kernel and initramfs builds), ``firmware.initrd``,
                    ``qemu.installs`` (QEMU 11 from a trixie tree built like the images)
                    and ``qemu.probe`` (which QEMU: it builds that tree on first use)
6     guest/agent   ``agent``, ``guest``, ``firmware`` (the package, ``override``: boots
                    once to read QEMU's IORT), ``tier3`` (L1/L2 machines, forwarding)
7     driver        ``driver``, ``devices`` (the in-guest DMA drivers)
8     checkers      ``rings``, ``tier3.hostcheck``
9     guest halves  ``scenarios.guest`` (what the agent runs: driver + checkers in guests)
10    verdict       ``scenarios.base`` (Check, Verdict, the registry, Prepared), ``repro``
                    (the bundle format a failed verdict leaves)
11    scenarios     ``scenarios`` (host halves), ``scenarios.runner``, ``kselftest``
                    (the kernel's own selftests, built and run in guests)
12    report        ``replay``, ``commands``, ``qualify``, ``fleet``, ``pytest_plugin``,
                    ``bisect``
13    cli           ``cli``, ``__main__``
====  ============  ================================================================

A module is in the layer of the longest name in the table that is it or one of its
packages; a module the table does not place fails the test (place it when adding it).
One more rule keeps the guest agent startable: the guest halves
(``harness.scenarios.guest``, which the agent imports by name) and everything they import
must be in what ``harness.agent.bundle.SHIPPED`` ships into guests.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.agent.bundle import SHIPPED

pytestmark = pytest.mark.tier0

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "harness"
#: the agent's entry points into the package (guests/agent/server.py imports these by name)
GUEST_HALVES = "harness.scenarios.guest"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("harness", "harness.errors", "harness.cachedir", "harness.artifacts",
                    "harness.host")),
    ("formats", ("harness.uapi", "harness.vtd", "harness.smmuv3", "harness.pgtable",
                 "harness.klog", "harness.firmware.acpi", "harness.firmware.iort",
                 "harness.firmware.capability", "harness.images.cpio")),
    ("description", ("harness.qemu.description", "harness.profiles", "harness.tier3.passthrough")),
    ("argv", ("harness.qemu.argv", "harness.qemu.accel", "harness.qemu.qmp",
              "harness.qemu.rundir", "harness.qemu.leaks", "harness.qemu.lifetime")),
    ("machine", ("harness.qemu",)),
    ("images", ("harness.images", "harness.firmware.initrd", "harness.qemu.installs",
                "harness.qemu.probe")),
    ("guest/agent", ("harness.agent", "harness.guest", "harness.firmware", "harness.tier3")),
    ("driver", ("harness.driver", "harness.devices")),
    ("checkers", ("harness.rings", "harness.tier3.hostcheck")),
    ("guest halves", ("harness.scenarios.guest",)),
    ("verdict", ("harness.scenarios.base", "harness.repro")),
    ("scenarios", ("harness.scenarios", "harness.kselftest", "harness.fuzz")),
    ("report", ("harness.replay", "harness.commands", "harness.qualify", "harness.fleet",
                "harness.pytest_plugin", "harness.bisect")),
    ("cli", ("harness.cli", "harness.__main__")),
)  # fmt: skip

Edge = tuple[str, str, str]
"""(importer, imported, ``path:line`` of the import statement)."""


def modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Every module of the package by dotted name: (file, is a package ``__init__``)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, known: dict[str, tuple[Path, bool]]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(
    name: str, path: Path, is_package: bool, known: dict[str, Any], busy_packages: set[str]
) -> Iterator[tuple[str, int]]:
    """The package's modules ``name`` imports (anywhere in it), with the statement's line."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name, is_package)
            targets = [f"{source}.{alias.name}" for alias in node.names] or [source]
        else:
            continue
        for target in targets:
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            module = _known(target, known)
            if module is None:
                continue
            yield module, node.lineno
            # importing a.b.c runs a.b's __init__ (and a's): count the packages the importer
            # is not itself inside of, when their __init__ imports anything of ours
            module = module.rpartition(".")[0]
            while module and module != name and not name.startswith(module + "."):
                if module in busy_packages:
                    yield module, node.lineno
                module = module.rpartition(".")[0]


def import_graph(root: Path = ROOT) -> list[Edge]:
    """Every import edge between modules of the package."""
    known = modules(root)
    direct = {
        name: list(imports(name, path, is_package, known, set()))
        for name, (path, is_package) in known.items()
    }
    busy = {name for name, (_, is_package) in known.items() if is_package and direct[name]}
    edges: set[Edge] = set()
    for name, (path, is_package) in known.items():
        for target, line in imports(name, path, is_package, known, busy):
            if target != name:
                edges.add((name, target, f"{path.relative_to(root)}:{line}"))
    return sorted(edges)


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component of more than one module."""
    graph: dict[str, dict[str, str]] = {}
    for src, dst, where in edges:
        graph.setdefault(src, {}).setdefault(dst, where)
        graph.setdefault(dst, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the package's depth is far below the limit
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, dict[str, str]], component: set[str]) -> list[Edge]:
    start = min(component)
    # breadth-first from start back to start, inside the component: a shortest cycle
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt not in component:
                    continue
                edge = (node, nxt, graph[node][nxt])
                if nxt == start:
                    return [*paths[node], edge]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], edge]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def layer_of(name: str) -> tuple[int, str] | None:
    """(rank, layer name) of a module, or None when the table does not place it."""
    best: tuple[int, int, str] | None = None
    for rank, (layer, names) in enumerate(LAYERS):
        for entry in names:
            inside = name == entry or (entry != PACKAGE and name.startswith(entry + "."))
            if inside and (best is None or len(entry) > best[0]):
                best = (len(entry), rank, layer)
    return None if best is None else (best[1], best[2])


def upward(edges: list[Edge]) -> list[str]:
    """Each import from a lower layer to a higher one, as a readable line."""
    found = []
    for src, dst, where in edges:
        low, high = layer_of(src), layer_of(dst)
        if low is not None and high is not None and high[0] > low[0]:
            found.append(f"{where}: {src} ({low[1]}) imports {dst} ({high[1]})")
    return found


def _shipped(name: str) -> bool:
    path = name.replace(".", "/")
    for entry in SHIPPED:
        if entry.endswith(".py"):
            if path == entry.removesuffix(".py") or path + "/__init__" == entry[:-3]:
                return True
        elif path == entry or path.startswith(entry + "/"):
            return True
    return False


def guest_side(edges: list[Edge]) -> set[str]:
    """What the agent can import: the guest halves and everything they import, transitively."""
    reached = {src for src, _, _ in edges if src.startswith(GUEST_HALVES)}
    reached |= {dst for _, dst, _ in edges if dst.startswith(GUEST_HALVES)}
    grew = True
    while grew:
        more = {dst for src, dst, _ in edges if src in reached} - reached
        reached |= more
        grew = bool(more)
    return reached


def escapes_the_bundle(edges: list[Edge]) -> list[str]:
    """Each import, by code the agent can run, of a module the bundle does not ship."""
    reached = guest_side(edges)
    return [
        f"{where}: {src} (runs in guests) imports {dst} (not shipped into guests)"
        for src, dst, where in edges
        if src in reached and not _shipped(dst)
    ]


def problems(root: Path = ROOT) -> list[str]:
    """Everything this test fails on, one line each (cycles, upward imports, unplaced)."""
    edges = import_graph(root)
    out = [f"unplaced module {name}: add it to LAYERS in {Path(__file__).name}"
           for name in modules(root) if layer_of(name) is None]  # fmt: skip
    for cycle in find_cycles(edges):
        chain = " -> ".join([cycle[0][0], *(dst for _, dst, _ in cycle)])
        out.append(f"import cycle {chain} ({'; '.join(where for *_, where in cycle)})")
    return out + upward(edges) + escapes_the_bundle(edges)


# -- the tests --------------------------------------------------------------------------


def test_the_package_has_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    shown = [" -> ".join([c[0][0], *(dst for _, dst, _ in c)]) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(shown)


def test_no_module_imports_a_higher_layer() -> None:
    found = upward(import_graph())
    assert not found, "imports from a lower layer to a higher one:\n" + "\n".join(found)


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in modules() if layer_of(name) is None]
    assert not unplaced, f"add these to LAYERS in {Path(__file__).name}: {unplaced}"


def test_shipped_modules_import_only_shipped_ones() -> None:
    found = escapes_the_bundle(import_graph())
    assert not found, "guest-side code imports host-side code:\n" + "\n".join(found)


# -- the checker itself, on small made-up packages -----------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_function_level_import_closes_a_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "",
        "errors.py": "def f():\n    from harness import host\n",
        "host.py": "from harness.errors import f\n",
    })  # fmt: skip
    (cycle,) = find_cycles(import_graph(root))
    assert [(src, dst) for src, dst, _ in cycle] == [
        ("harness.errors", "harness.host"),
        ("harness.host", "harness.errors"),
    ]
    assert cycle[0][2] == "harness/errors.py:2"


def test_a_type_checking_import_and_a_relative_one_count(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "",
        "rings/__init__.py": "",
        "rings/expect.py": "from .verdict import V\n",
        "rings/verdict.py": "from typing import TYPE_CHECKING\n"
                            "if TYPE_CHECKING:\n    from harness.rings.expect import E\n",
    })  # fmt: skip
    (cycle,) = find_cycles(import_graph(root))
    assert {src for src, _, _ in cycle} == {"harness.rings.expect", "harness.rings.verdict"}


def test_importing_a_submodule_runs_its_package(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "",
        "images/__init__.py": "from harness.images import pipeline\n",
        "images/pipeline.py": "",
        "images/cpio.py": "",
        "qemu/__init__.py": "",
        "qemu/argv.py": "from harness.images.cpio import write\n",
    })  # fmt: skip
    edges = import_graph(root)
    assert ("harness.qemu.argv", "harness.images") in {(s, d) for s, d, _ in edges}
    assert ("harness.images.pipeline", "harness.images") not in {(s, d) for s, d, _ in edges}
    (line,) = upward(edges)
    assert line.startswith("harness/qemu/argv.py:1: harness.qemu.argv (argv) imports")
    assert "harness.images (images)" in line


def test_the_layer_table_places_by_the_longest_name() -> None:
    assert layer_of("harness") == (0, "foundation")
    assert layer_of("harness.qemu.machine") == (4, "machine")
    assert layer_of("harness.qemu.argv") == (3, "argv")
    assert layer_of("harness.scenarios.guest.mock") == (9, "guest halves")
    assert layer_of("harness.scenarios.vtd") == (11, "scenarios")
    assert layer_of("harness.nothing_like_it") is None


def test_the_bundle_rule_reads_shipped() -> None:
    assert _shipped("harness.driver.iommufd") and _shipped("harness.scenarios")
    assert _shipped("harness.scenarios.guest.vtd") and not _shipped("harness.scenarios.base")
    assert not _shipped("harness.guest") and not _shipped("harness.qemu.machine")
