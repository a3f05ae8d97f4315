"""Check ctypes uAPI models against the real headers with a C compiler, and their coverage.

A uAPI module (``harness.uapi.iommufd`` ...) provides:

- ``C_HEADERS``: headers to ``#include``; a name like ``"linux/iommufd.h"`` is searched in
  the module's ``C_INCLUDE_DIRS`` then in the installed uAPI tree (``headers.py``); an
  absolute path is included as is.
- ``STRUCTS``: every struct / union class that has a C name (the class name; a
  ``ctypes.Union`` subclass is a C ``union``).  Classes standing for anonymous C types
  (members of anonymous unions, inline ``struct { } name;``) are not listed: they are
  checked field by field through their parent.
- ``IOCTLS``: names of the module-level ioctl constants.
- optional ``C_INCLUDE_DIRS`` (absolute, or relative to the repository root),
  ``CONSTANTS`` (names to compare; default: every enumerator and numeric ``#define`` of
  the headers that the module defines), and ``ABI_EXCLUDE``: ``((name, reason), ...)``
  for header items deliberately not modelled (``name`` is ``struct.field`` for a field).

One C program is generated (one translation unit per module, so modules whose headers
conflict can be checked together), compiled with gcc, run, and compared with ctypes:
``sizeof`` / alignment of each struct, ``offsetof`` / ``sizeof`` / element size /
signedness of each field (through anonymous and nested members, as ``outer.inner``
paths), and the value of each ioctl and constant.  A name C does not know becomes a
``compile`` mismatch, not a failed run.  Coverage parses the headers' text for every
``struct`` / ``union`` definition, its members, every ``_IO*`` ioctl and every constant,
and reports what the module does not model.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.errors import HarnessError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODULES = (
    "harness.uapi.iommufd",
    "harness.uapi.iommufd_test",
    "harness.uapi.vfio",
    "harness.uapi.legacy",
)
_SIGNED_CODES = frozenset("bhilq")
_UNSIGNED_CODES = frozenset("BHILQ")


class AbiCheckError(HarnessError):
    """The check itself cannot run: no compiler, a module without the conventions' tuples."""


# --- report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """A value on which the Python model and the C compiler disagree."""

    module: str
    name: str
    what: str
    python: int | str
    c: int | str

    def __str__(self) -> str:
        return f"{self.module}: {self.name} {self.what}: python={self.python} C={self.c}"


@dataclass(frozen=True)
class Missing:
    """Something the header defines (or the module defines) that is not modelled / listed."""

    module: str
    kind: str
    name: str
    where: str

    def __str__(self) -> str:
        return f"{self.module}: {self.kind} {self.name} not modelled ({self.where})"


@dataclass
class ModuleReport:
    """What was compared for one module and what differed."""

    module: str
    headers: tuple[str, ...]
    structs: int = 0
    fields: int = 0
    ioctls: int = 0
    constants: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    excluded: tuple[tuple[str, str], ...] = ()
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.missing or self.errors)

    def missing_of(self, *kinds: str) -> list[Missing]:
        return [m for m in self.missing if m.kind in kinds]

    def summary(self) -> str:
        """One terse line: counts compared and problems found."""
        return (
            f"{self.module}: {self.structs} structs, {self.fields} fields, {self.ioctls} ioctls, "
            f"{self.constants} constants compared; {len(self.mismatches)} mismatches, "
            f"{len(self.missing)} not modelled, {len(self.excluded)} excluded"
        )


@dataclass
class AbiReport:
    """The result of one check run over several modules."""

    modules: list[ModuleReport]
    compiler: str
    include_dirs: tuple[Path, ...]

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.modules)

    @property
    def mismatches(self) -> list[Mismatch]:
        return [x for m in self.modules for x in m.mismatches]

    @property
    def missing(self) -> list[Missing]:
        return [x for m in self.modules for x in m.missing]

    def module(self, name: str) -> ModuleReport:
        for report in self.modules:
            if report.module == name or report.module.endswith("." + name):
                return report
        raise KeyError(name)

    def format(self) -> str:
        lines = [m.summary() for m in self.modules]
        for report in self.modules:
            lines += [f"  MISMATCH {x}" for x in report.mismatches]
            lines += [f"  MISSING {x}" for x in report.missing]
            lines += [f"  ERROR {report.module}: {e}" for e in report.errors]
        return "\n".join(lines)


# --- header text ----------------------------------------------------------------------

_COMMENT_OR_LITERAL = re.compile(
    r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|/\*.*?\*/|//[^\n]*', re.DOTALL
)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\()?(.*)$", re.MULTILINE)
_IOCTL_VALUE = re.compile(r"^\(?\s*_IO(?:C|R|W|WR)?\s*\(")
_NUMERIC_VALUE = re.compile(r"^(?:[\w\s()<>|&~+\-*/^%]|'[^'\\]')+$")
_TOKEN = re.compile(r"[A-Za-z_]\w*|\d\w*|\S")
_QUALIFIERS = frozenset({"const", "volatile", "__extension__", "__user"})


@dataclass
class HeaderDecls:
    """Declarations found in a header's text."""

    records: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    ioctls: list[str] = field(default_factory=list)
    enumerators: list[str] = field(default_factory=list)
    defines: dict[str, str] = field(default_factory=dict)

    @property
    def constants(self) -> list[str]:
        """Enumerators and object-like ``#define``s with an integer-looking value."""
        numeric = [
            n
            for n, v in self.defines.items()
            if v and not n.startswith("_") and _NUMERIC_VALUE.match(v)
        ]
        return self.enumerators + [n for n in numeric if n not in self.enumerators]


def _strip_comments(text: str) -> str:
    def keep_literals(match: re.Match[str]) -> str:
        token = match.group(0)
        return token if token[0] in "\"'" else " "

    return _COMMENT_OR_LITERAL.sub(keep_literals, text)


def _matching(tokens: list[str], start: int) -> int:
    """Index of the bracket closing ``tokens[start]``."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    opener, closer, depth = tokens[start], pairs[tokens[start]], 0
    for i in range(start, len(tokens)):
        if tokens[i] == opener:
            depth += 1
        elif tokens[i] == closer:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opener!r}")


def _split_top(tokens: list[str], separator: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        if token in "{([":
            depth += 1
        elif token in "})]":
            depth -= 1
        if token == separator and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


def _drop_attributes(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in ("__attribute__", "__attribute") and i + 1 < len(tokens):
            i = _matching(tokens, i + 1) + 1
            continue
        if tokens[i] not in _QUALIFIERS:
            out.append(tokens[i])
        i += 1
    return out


def _declarator_name(tokens: list[str]) -> str | None:
    """The identifier a declarator declares: ``*p``, ``a[4]``, ``b : 3`` -> p, a, b."""
    name = None
    for token in tokens:
        if token in ("[", ":"):
            break
        if re.match(r"[A-Za-z_]", token):
            name = token
    return name


def _members(tokens: list[str], decls: HeaderDecls) -> list[str]:
    """Member paths of a struct / union body (anonymous members flattened)."""
    paths: list[str] = []
    for decl in _split_top(tokens, ";"):
        decl = _drop_attributes(decl)
        if not decl:
            continue
        if "{" in decl:
            open_at = decl.index("{")
            close_at = _matching(decl, open_at)
            inner = _members(decl[open_at + 1 : close_at], decls)
            tag = decl[open_at - 1] if open_at >= 2 else None
            if tag is not None and decl[0] in ("struct", "union"):
                decls.records[tag] = (decl[0], inner)
            names = [_declarator_name(d) for d in _split_top(decl[close_at + 1 :], ",")]
            declared = [n for n in names if n]
            if not declared:
                paths += inner
            for name in declared:
                paths.append(name)
                if tag is None:
                    paths += [f"{name}.{p}" for p in inner]
            continue
        if len(decl) >= 2 and decl[1] == "(" and decl[0].isupper():
            args = [a for a in decl[2 : _matching(decl, 1)] if re.match(r"[A-Za-z_]", a)]
            if args:
                paths.append(args[-1])
            continue
        for i, declarator in enumerate(_split_top(decl, ",")):
            declared_name = _declarator_name(declarator)
            if declared_name and (i > 0 or len(declarator) > 1):
                paths.append(declared_name)
    return paths


def parse_header(text: str) -> HeaderDecls:
    """Find struct / union definitions (with member paths), ioctls, enumerators, #defines."""
    decls = HeaderDecls()
    text = _strip_comments(text).replace("\\\n", " ")
    for match in _DEFINE.finditer(text):
        name, function_like, value = match.group(1), match.group(2), match.group(3).strip()
        if function_like:
            continue
        if _IOCTL_VALUE.match(value):
            decls.ioctls.append(name)
        else:
            decls.defines[name] = value
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    tokens = _TOKEN.findall(code)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("struct", "union", "enum"):
            j = i + 1
            tag = tokens[j] if j < len(tokens) and re.match(r"[A-Za-z_]", tokens[j]) else None
            if tag is not None:
                j += 1
            if j < len(tokens) and tokens[j] == "{":
                end = _matching(tokens, j)
                body = tokens[j + 1 : end]
                if token == "enum":
                    for item in _split_top(body, ","):
                        decls.enumerators.append(item[0])
                else:
                    members = _members(body, decls)
                    if tag is not None:
                        decls.records[tag] = (token, members)
                i = end + 1
                continue
        i += 1
    return decls


# --- Python side ----------------------------------------------------------------------


def _is_record(ctype: Any) -> bool:
    return isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union))


def _c_type_name(cls: type) -> str:
    return f"{'union' if issubclass(cls, ctypes.Union) else 'struct'} {cls.__name__}"


def _signedness(ctype: Any) -> bool | None:
    code = getattr(ctype, "_type_", None)
    if isinstance(code, str) and code in _SIGNED_CODES:
        return True
    if isinstance(code, str) and code in _UNSIGNED_CODES:
        return False
    return None


@dataclass(frozen=True)
class _Field:
    c_path: str
    cover_path: str
    offset: int
    size: int | None
    element_path: str | None
    element_size: int | None
    signed: bool | None
    bitfield: bool = False


def _walk(
    cls: Any, c_prefix: str, cover_prefix: str, base: int, named: frozenset[type]
) -> Iterator[_Field]:
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for entry in cls._fields_:
        name, ctype = entry[0], entry[1]
        offset = base + int(getattr(cls, name).offset)
        if len(entry) > 2:
            path = c_prefix + name
            yield _Field(path, cover_prefix + name, offset, None, None, None, None, True)
        elif name in anonymous:
            yield from _walk(ctype, c_prefix, cover_prefix, offset, named)
        else:
            yield from _member(ctype, c_prefix + name, cover_prefix + name, offset, named)


def _member(
    ctype: Any, c_path: str, cover_path: str, offset: int, named: frozenset[type]
) -> Iterator[_Field]:
    element = ctype
    index = ""
    while isinstance(element, type) and issubclass(element, ctypes.Array):
        element = element._type_
        index += "[0]"
    is_array = bool(index)
    flexible = is_array and ctypes.sizeof(ctype) == 0
    yield _Field(
        c_path,
        cover_path,
        offset,
        None if flexible else ctypes.sizeof(ctype),
        c_path + index if is_array else None,
        ctypes.sizeof(element) if is_array else None,
        _signedness(element),
    )
    if _is_record(element) and element not in named:
        yield from _walk(element, f"{c_path}{index}.", f"{cover_path}.", offset, named)


def _member_types(cls: Any) -> Iterator[type]:
    for entry in cls._fields_:
        ctype = entry[1]
        while isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
            ctype = ctype._type_
        if _is_record(ctype):
            yield ctype
            yield from _member_types(ctype)


# --- generation -----------------------------------------------------------------------


@dataclass
class _Check:
    ident: int
    name: str
    what: str
    expr: str
    expected: int


@dataclass
class _Unit:
    """One module's part of the program."""

    report: ModuleReport
    headers: list[str]
    include_dirs: list[Path]
    checks: list[_Check]
    source_lines: dict[int, int] = field(default_factory=dict)


class _Ids:
    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next


def _attr(module: Any, name: str) -> Any:
    try:
        return getattr(module, name)
    except AttributeError:
        raise AbiCheckError(
            f"{getattr(module, '__name__', module)!r} has no {name} (see docs/CONVENTIONS.md)"
        ) from None


def _resolve_header(header: str, dirs: Sequence[Path]) -> Path | None:
    path = Path(header)
    if path.is_absolute():
        return path if path.is_file() else None
    for directory in dirs:
        if (directory / header).is_file():
            return directory / header
    return None


def _struct_checks(
    cls: Any, report: ModuleReport, named: frozenset[type], ids: _Ids
) -> tuple[list[_Check], list[_Field]]:
    ctype = _c_type_name(cls)
    pointer = f"(({ctype} *)0)"
    checks = [
        _Check(ids(), cls.__name__, "sizeof", f"sizeof({ctype})", ctypes.sizeof(cls)),
        _Check(ids(), cls.__name__, "alignof", f"_Alignof({ctype})", ctypes.alignment(cls)),
    ]
    fields = list(_walk(cls, "", "", 0, named))
    for f in fields:
        name = f"{cls.__name__}.{f.c_path}"
        if f.bitfield:
            report.mismatches.append(
                Mismatch(report.module, name, "bitfield", "not supported by the checker", "-")
            )
            continue
        checks.append(_Check(ids(), name, "offsetof", f"offsetof({ctype}, {f.c_path})", f.offset))
        if f.size is not None:
            checks.append(_Check(ids(), name, "sizeof", f"sizeof({pointer}->{f.c_path})", f.size))
        element = f"{pointer}->{f.element_path or f.c_path}"
        if f.element_size is not None:
            checks.append(
                _Check(ids(), name, "element sizeof", f"sizeof({element})", f.element_size)
            )
        if f.signed is not None:
            expr = f"((__typeof__({element}))-1 < 0)"
            checks.append(_Check(ids(), name, "signed", expr, int(f.signed)))
    return checks, fields


def _constant_value(module: Any, name: str) -> int | None:
    value = getattr(module, name, None)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return None


def _prepare(
    module: Any, global_dirs: Sequence[Path], named: frozenset[type], ids: _Ids, coverage: bool
) -> _Unit:
    name = str(getattr(module, "__name__", module))
    headers = [str(h) for h in _attr(module, "C_HEADERS")]
    structs = tuple(_attr(module, "STRUCTS"))
    ioctls = tuple(_attr(module, "IOCTLS"))
    own_dirs = [
        Path(d) if Path(d).is_absolute() else REPO_ROOT / d
        for d in getattr(module, "C_INCLUDE_DIRS", ())
    ]
    excluded = tuple((str(n), str(r)) for n, r in getattr(module, "ABI_EXCLUDE", ()))
    report = ModuleReport(name, tuple(headers), excluded=excluded)
    unit = _Unit(report, headers, own_dirs, [])

    decls = HeaderDecls()
    for header in headers:
        path = _resolve_header(header, [*own_dirs, *global_dirs])
        if path is None:
            report.errors.append(f"header {header} not found in {[*own_dirs, *global_dirs]}")
            continue
        found = parse_header(path.read_text(errors="replace"))
        decls.records.update(found.records)
        decls.ioctls += found.ioctls
        decls.enumerators += found.enumerators
        decls.defines.update(found.defines)

    covered_paths: dict[str, set[str]] = {}
    for cls in structs:
        if not _is_record(cls):
            raise AbiCheckError(f"{name}.STRUCTS holds {cls!r}, not a ctypes struct / union")
        checks, fields = _struct_checks(cls, report, named, ids)
        unit.checks += checks
        report.structs += 1
        report.fields += len(fields)
        covered_paths[cls.__name__] = {f.cover_path for f in fields}

    for ioctl in ioctls:
        value = _constant_value(module, ioctl)
        if value is None:
            raise AbiCheckError(f"{name}.{ioctl} (listed in IOCTLS) is not an int")
        unit.checks.append(_Check(ids(), ioctl, "ioctl value", ioctl, value))
    report.ioctls = len(ioctls)

    explicit = getattr(module, "CONSTANTS", None)
    constant_names = list(explicit) if explicit is not None else decls.constants
    for constant in dict.fromkeys(constant_names):
        value = _constant_value(module, constant)
        if value is None or constant in ioctls:
            continue
        unit.checks.append(_Check(ids(), constant, "value", constant, value))
        report.constants += 1

    if coverage:
        _coverage(module, report, decls, structs, ioctls, covered_paths)
    return unit


def _coverage(
    module: Any,
    report: ModuleReport,
    decls: HeaderDecls,
    structs: tuple[type, ...],
    ioctls: tuple[str, ...],
    covered_paths: dict[str, set[str]],
) -> None:
    skip = {n for n, _ in report.excluded}
    where = ", ".join(report.headers)
    modelled = {cls.__name__ for cls in structs}
    for tag, (kind, members) in decls.records.items():
        if tag in skip:
            continue
        if tag not in modelled:
            report.missing.append(Missing(report.module, kind, tag, where))
            continue
        for member in members:
            if member not in covered_paths[tag] and f"{tag}.{member}" not in skip:
                report.missing.append(Missing(report.module, "field", f"{tag}.{member}", where))
    for ioctl in decls.ioctls:
        if ioctl not in ioctls and ioctl not in skip:
            report.missing.append(Missing(report.module, "ioctl", ioctl, where))
    for constant in decls.constants:
        if constant not in skip and _constant_value(module, constant) is None:
            report.missing.append(Missing(report.module, "constant", constant, where))
    if isinstance(module, ModuleType):
        reachable = set(structs)
        for cls in structs:
            reachable.update(_member_types(cls))
        for attr, value in vars(module).items():
            if _is_record(value) and value.__module__ == module.__name__ and value not in reachable:
                report.missing.append(
                    Missing(report.module, "class", attr, "in the module but not in STRUCTS")
                )


_PRELUDE = """\
#include <stddef.h>
#include <stdio.h>
static void abi_print(int id, int negative, unsigned long long value, size_t size)
{
	if (negative)
		printf("%d -%llu %zu\\n", id, 0ULL - value, size);
	else
		printf("%d %llu %zu\\n", id, value, size);
}
"""


def _render(unit: _Unit, index: int) -> str:
    lines = _PRELUDE.splitlines()
    for header in unit.headers:
        lines.append(
            f'#include "{header}"' if Path(header).is_absolute() else f"#include <{header}>"
        )
    lines.append(f"void abi_unit_{index}(void)")
    lines.append("{")
    unit.source_lines = {}
    for check in unit.checks:
        unit.source_lines[len(lines) + 1] = check.ident
        lines.append(
            f"\tabi_print({check.ident}, ({check.expr}) < 0, "
            f"(unsigned long long)({check.expr}), sizeof({check.expr}));"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


_GCC_ERROR = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):\d+: error: (?P<text>.*)$", re.MULTILINE)


def _compile_unit(
    unit: _Unit, index: int, work: Path, cc: str, dirs: Sequence[Path]
) -> Path | None:
    """Compile one unit, turning errors on check lines into ``compile`` mismatches."""
    source = work / f"unit_{index}.c"
    obj = work / f"unit_{index}.o"
    flags = [f"-I{d}" for d in [*unit.include_dirs, *dirs]]
    for _ in range(20):
        source.write_text(_render(unit, index))
        done = subprocess.run(
            [cc, "-std=gnu11", "-w", "-c", str(source), "-o", str(obj), *flags],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return obj
        failed: dict[int, str] = {}
        unmapped: list[str] = []
        for error in _GCC_ERROR.finditer(done.stderr):
            ident = None
            if Path(error["file"]).name == source.name:
                ident = unit.source_lines.get(int(error["line"]))
            if ident is None:
                unmapped.append(error.group(0))
            else:
                failed.setdefault(ident, error["text"])
        if unmapped or not failed:
            unit.report.errors.append(
                "compiling failed: " + ("\n".join(unmapped) or done.stderr.strip()[-2000:])
            )
            return None
        for check in [c for c in unit.checks if c.ident in failed]:
            unit.report.mismatches.append(
                Mismatch(
                    unit.report.module,
                    check.name,
                    check.what,
                    check.expected,
                    f"compile error: {failed[check.ident]}",
                )
            )
        unit.checks = [c for c in unit.checks if c.ident not in failed]
    unit.report.errors.append("compiling failed: too many rounds of errors")
    return None


def _default_include_dirs() -> tuple[Path, ...]:
    from harness.uapi import headers

    return headers.ensure_uapi_tree().include_dirs


def default_modules() -> list[ModuleType]:
    """The harness's uAPI modules that exist (vfio and legacy may not be written yet)."""
    found = []
    for name in DEFAULT_MODULES:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found


def check(
    modules: Sequence[Any] | None = None,
    *,
    include_dirs: Sequence[Path] | None = None,
    cc: str = "gcc",
    coverage: bool = True,
    keep: Path | None = None,
) -> AbiReport:
    """Compare ``modules`` (default: ``default_modules()``) with the C compiler's view."""
    if shutil.which(cc) is None:
        raise AbiCheckError(f"C compiler {cc!r} not found; scripts/setup.sh installs gcc")
    modules = list(modules) if modules is not None else default_modules()
    dirs = tuple(include_dirs) if include_dirs is not None else _default_include_dirs()
    named = frozenset(cls for m in modules for cls in _attr(m, "STRUCTS"))
    ids = _Ids()
    units = [_prepare(m, dirs, named, ids, coverage) for m in modules]
    with tempfile.TemporaryDirectory(prefix="abicheck-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        objects = {}
        for index, unit in enumerate(units):
            if not unit.report.errors:
                obj = _compile_unit(unit, index, work, cc, dirs)
                if obj is not None:
                    objects[index] = obj
        results = _run_program(objects, work, cc)
    for index, unit in enumerate(units):
        if index not in objects:
            continue
        for c in unit.checks:
            if c.ident not in results:
                unit.report.errors.append(f"no value printed for {c.name} {c.what}")
                continue
            value, size = results[c.ident]
            if not _same_value(c, value, size):
                unit.report.mismatches.append(
                    Mismatch(unit.report.module, c.name, c.what, c.expected, value)
                )
    return AbiReport([u.report for u in units], cc, dirs)


def _same_value(check: _Check, value: int, size: int) -> bool:
    """Equal; a constant also matches the bit pattern of its C type (``1 << 31`` is an int)."""
    if value == check.expected:
        return True
    return check.what == "value" and value < 0 and check.expected == value + (1 << (8 * size))


def _run_program(objects: dict[int, Path], work: Path, cc: str) -> dict[int, tuple[int, int]]:
    if not objects:
        return {}
    main = work / "main.c"
    decls = "".join(f"void abi_unit_{i}(void);\n" for i in objects)
    calls = "".join(f"\tabi_unit_{i}();\n" for i in objects)
    main.write_text(f"{decls}int main(void)\n{{\n{calls}\treturn 0;\n}}\n")
    program = work / "abicheck"
    link = subprocess.run(
        [cc, "-o", str(program), str(main), *map(str, objects.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    if link.returncode != 0:
        raise AbiCheckError(f"linking the check program failed:\n{link.stderr.strip()}")
    run = subprocess.run([str(program)], capture_output=True, text=True, check=False, timeout=60)
    if run.returncode != 0:
        raise AbiCheckError(f"the check program failed (exit {run.returncode}): {run.stderr}")
    values: dict[int, tuple[int, int]] = {}
    for line in run.stdout.splitlines():
        ident, value, size = line.split()
        values[int(ident)] = (int(value), int(size))
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the counts, mismatches and coverage gaps; exit 1 if there are any."""
    parser = argparse.ArgumentParser(prog="python -m harness.uapi.abicheck", description=__doc__)
    parser.add_argument("modules", nargs="*", help="e.g. iommufd or harness.uapi.vfio")
    parser.add_argument("--cc", default="gcc", help="C compiler (default gcc)")
    parser.add_argument(
        "-I", dest="include", action="append", type=Path, help="uAPI include dir (default: cache)"
    )
    parser.add_argument("--keep", type=Path, help="write the generated C program here")
    parser.add_argument("--no-coverage", action="store_true", help="skip the coverage check")
    args = parser.parse_args(argv)
    try:
        modules = [
            importlib.import_module(m if "." in m else f"harness.uapi.{m}") for m in args.modules
        ] or default_modules()
        report = check(
            modules,
            include_dirs=args.include,
            cc=args.cc,
            coverage=not args.no_coverage,
            keep=args.keep,
        )
    except (HarnessError, ImportError) as exc:
        print(f"abicheck: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
