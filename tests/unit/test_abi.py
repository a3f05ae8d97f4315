"""uAPI models against the real Linux 7.3 headers (compiled with gcc); how the check fails."""

from __future__ import annotations

import ctypes
import importlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from harness.uapi import abicheck, headers, iommufd
from harness.uapi._struct import UapiStruct

pytestmark = pytest.mark.tier0

MODULES = ("iommufd", "iommufd_test", "vfio", "legacy")


@pytest.fixture(scope="session")
def include_dirs() -> tuple[Path, ...]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (scripts/setup.sh installs it)")
    try:
        return headers.ensure_uapi_tree().include_dirs
    except headers.UapiHeadersError as exc:
        pytest.skip(f"no Linux 7.3 uAPI headers: {exc}")


def _import(short: str) -> ModuleType | Exception | None:
    """The module, or the exception importing it raised (None: not written yet)."""
    name = f"harness.uapi.{short}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        return None if exc.name == name else exc
    except Exception as exc:  # a module being edited must not break the others' checks
        return exc


@pytest.fixture(scope="session")
def full_report(include_dirs: tuple[Path, ...]) -> abicheck.AbiReport:
    modules = [m for m in map(_import, MODULES) if isinstance(m, ModuleType)]
    return abicheck.check(modules, include_dirs=include_dirs)


@pytest.mark.parametrize("short", MODULES)
def test_module_matches_the_kernel_abi(
    short: str, full_report: abicheck.AbiReport, request: pytest.FixtureRequest
) -> None:
    module: Any = _import(short)
    if module is None:
        pytest.skip(f"harness.uapi.{short} does not exist yet")
    if isinstance(module, Exception):
        raise module
    report = full_report.module(module.__name__)
    print(report.summary())
    request.node.user_properties.append(("abi", report.summary()))
    assert report.errors == []
    assert [str(m) for m in report.mismatches] == []
    assert [str(m) for m in report.missing] == []
    assert report.structs == len(module.STRUCTS)
    assert report.ioctls == len(module.IOCTLS)
    assert report.fields >= report.structs
    assert report.constants > 0


def test_iommufd_counts_cover_the_whole_header(full_report: abicheck.AbiReport) -> None:
    report = full_report.module("harness.uapi.iommufd")
    assert (report.structs, report.ioctls) == (38, 22)
    assert report.constants == 80


# --- the check can fail ---------------------------------------------------------------


class _WrongDestroy(UapiStruct):
    _fields_ = [("size", ctypes.c_uint32), ("id", ctypes.c_uint16)]


class _WrongMapFile(UapiStruct):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("ioas_id", ctypes.c_uint32),
        ("fd", ctypes.c_uint32),
        ("start", ctypes.c_uint64),
        ("length", ctypes.c_uint64),
        ("iova", ctypes.c_uint64),
    ]


class _WrongUnmap(UapiStruct):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("ioas_id", ctypes.c_uint32),
        ("length", ctypes.c_uint64),
        ("iova", ctypes.c_uint64),
    ]


class _WrongName(UapiStruct):
    _fields_ = [("size", ctypes.c_uint32), ("ioas", ctypes.c_uint32)]


for _cls, _kernel_name in (
    (_WrongDestroy, "iommu_destroy"),
    (_WrongMapFile, "iommu_ioas_map_file"),
    (_WrongUnmap, "iommu_ioas_unmap"),
    (_WrongName, "iommu_ioas_change_process"),
):
    _cls.__name__ = _kernel_name


@pytest.fixture(scope="module")
def wrong_report(include_dirs: tuple[Path, ...]) -> abicheck.ModuleReport:
    wrong = SimpleNamespace(
        __name__="wrong",
        C_HEADERS=("linux/iommufd.h",),
        STRUCTS=(_WrongDestroy, _WrongMapFile, _WrongUnmap, _WrongName),
        IOCTLS=("IOMMU_DESTROY",),
        IOMMU_DESTROY=iommufd.IOMMU_DESTROY + 1,
        CONSTANTS=("IOMMUFD_CMD_IOAS_MAP", "IOMMUFD_TYPE"),
        IOMMUFD_CMD_IOAS_MAP=0x86,
        IOMMUFD_TYPE=iommufd.IOMMUFD_TYPE,
    )
    return abicheck.check([wrong], include_dirs=include_dirs, coverage=False).modules[0]


@pytest.mark.parametrize(
    ("name", "what", "python", "c"),
    [
        ("iommu_destroy.id", "sizeof", 2, 4),
        ("iommu_ioas_map_file.fd", "signed", 0, 1),
        ("iommu_ioas_unmap.iova", "offsetof", 16, 8),
        ("iommu_ioas_unmap.length", "offsetof", 8, 16),
        ("iommu_ioas_unmap", "sizeof", 24, 24),
        ("IOMMU_DESTROY", "ioctl value", iommufd.IOMMU_DESTROY + 1, iommufd.IOMMU_DESTROY),
        ("IOMMUFD_CMD_IOAS_MAP", "value", 0x86, 0x85),
    ],
)
def test_a_wrong_model_is_reported(
    wrong_report: abicheck.ModuleReport, name: str, what: str, python: int, c: int
) -> None:
    found = {(m.name, m.what): m for m in wrong_report.mismatches}
    if python == c:
        assert (name, what) not in found
        return
    assert (name, what) in found, wrong_report.mismatches
    assert (found[name, what].python, found[name, what].c) == (python, c)


def test_a_field_c_does_not_have_is_a_compile_mismatch(
    wrong_report: abicheck.ModuleReport,
) -> None:
    compile_errors = [m for m in wrong_report.mismatches if str(m.c).startswith("compile error")]
    assert {m.name for m in compile_errors} == {"iommu_ioas_change_process.ioas"}
    assert "no member named" in str(compile_errors[0].c)
    assert wrong_report.errors == []
    assert wrong_report.constants == 2


def test_an_unmodelled_struct_field_ioctl_and_constant_are_reported(
    include_dirs: tuple[Path, ...],
) -> None:
    class iommu_vfio_ioas(UapiStruct):  # noqa: N801 - the kernel's name is what is checked
        _fields_ = [
            ("size", ctypes.c_uint32),
            ("ioas_id", ctypes.c_uint32),
            ("op", ctypes.c_uint16),
        ]

    partial = SimpleNamespace(
        __name__="partial",
        C_HEADERS=("linux/iommufd.h",),
        STRUCTS=(iommufd.iommu_destroy, iommu_vfio_ioas),
        IOCTLS=("IOMMU_DESTROY",),
        IOMMU_DESTROY=iommufd.IOMMU_DESTROY,
    )
    report = abicheck.check([partial], include_dirs=include_dirs).modules[0]
    assert report.mismatches == []
    missing = {(m.kind, m.name) for m in report.missing}
    assert ("field", "iommu_vfio_ioas.__reserved") in missing
    assert ("struct", "iommu_hwpt_alloc") in missing
    assert ("ioctl", "IOMMU_HWPT_ALLOC") in missing
    assert ("constant", "IOMMU_HWPT_DATA_VTD_S1") in missing
    assert ("struct", "iommu_destroy") not in missing

    partial.ABI_EXCLUDE = (("iommu_vfio_ioas.__reserved", "tail padding in this test"),)
    report = abicheck.check([partial], include_dirs=include_dirs).modules[0]
    assert ("field", "iommu_vfio_ioas.__reserved") not in {(m.kind, m.name) for m in report.missing}
    assert len(report.excluded) == 1


def test_a_class_missing_from_structs_is_reported(include_dirs: tuple[Path, ...]) -> None:
    module: Any = ModuleType("fake_uapi")
    for kernel in (iommufd.iommu_destroy, iommufd.iommu_ioas_alloc):
        copy = type(kernel.__name__, (UapiStruct,), {"_fields_": kernel._fields_})
        copy.__module__ = module.__name__
        setattr(module, kernel.__name__, copy)
    module.C_HEADERS = ("linux/iommufd.h",)
    module.STRUCTS = (module.iommu_destroy,)
    module.IOCTLS = ()
    report = abicheck.check([module], include_dirs=include_dirs).modules[0]
    assert report.mismatches == []
    assert ("class", "iommu_ioas_alloc") in {(m.kind, m.name) for m in report.missing}


def test_a_missing_header_is_a_module_error_not_a_crash(include_dirs: tuple[Path, ...]) -> None:
    broken = SimpleNamespace(
        __name__="broken", C_HEADERS=("linux/no_such_header.h",), STRUCTS=(), IOCTLS=()
    )
    report = abicheck.check([broken, iommufd], include_dirs=include_dirs)
    assert "no_such_header.h" in report.modules[0].errors[0]
    assert report.modules[1].ok
    assert not report.ok


def test_a_module_without_the_conventions_tuples_is_refused(
    include_dirs: tuple[Path, ...],
) -> None:
    with pytest.raises(abicheck.AbiCheckError, match="STRUCTS"):
        abicheck.check([SimpleNamespace(__name__="bare", C_HEADERS=())], include_dirs=include_dirs)


def test_cli_prints_counts_and_exits_zero(
    include_dirs: tuple[Path, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [f"-I{d}" for d in include_dirs]
    assert abicheck.main(["iommufd_test", *flags]) == 0
    out = capsys.readouterr().out
    assert out.startswith("harness.uapi.iommufd_test: 7 structs, ")
    assert "0 mismatches, 0 not modelled" in out


# --- header parsing -------------------------------------------------------------------

SNIPPET = r"""
/* struct not_a_definition { int x; }; */
#define SNIP_TYPE ('s')
#define SNIP_FLAG (1 << 3) /* trailing comment */
#define SNIP_STRING "a // b"
#define SNIP_MACRO(x) ((x) + 1)
#define SNIP_GET _IOWR(SNIP_TYPE, 1, \
        struct snip_outer)
enum snip_kind { SNIP_A = 1, SNIP_B, };
struct snip_outer {
	__u32 argsz;
#define SNIP_INSIDE 7
	union {
		__u32 in;
		__u32 out;
	};
	struct {
		__u16 lo, hi;
	} pair[2];
	struct snip_named { __u8 a; } named;
	__u32 bits : 3;
	__aligned_u64 ptr __attribute__((aligned(8)));
	__DECLARE_FLEX_ARRAY(__u8, data);
};
"""


def test_parse_header_finds_records_members_ioctls_and_constants() -> None:
    decls = abicheck.parse_header(SNIPPET)
    assert set(decls.records) == {"snip_outer", "snip_named"}
    assert decls.records["snip_outer"] == (
        "struct",
        ["argsz", "in", "out", "pair", "pair.lo", "pair.hi", "named", "bits", "ptr", "data"],
    )
    assert decls.records["snip_named"] == ("struct", ["a"])
    assert decls.ioctls == ["SNIP_GET"]
    assert decls.enumerators == ["SNIP_A", "SNIP_B"]
    assert decls.constants == ["SNIP_A", "SNIP_B", "SNIP_TYPE", "SNIP_FLAG", "SNIP_INSIDE"]


def test_the_parser_sees_the_whole_iommufd_header(include_dirs: tuple[Path, ...]) -> None:
    decls = abicheck.parse_header((include_dirs[0] / "linux/iommufd.h").read_text())
    assert len(decls.records) == len(iommufd.STRUCTS)
    assert sorted(decls.ioctls) == sorted(iommufd.IOCTLS)
    assert decls.records["iommu_hw_info"][1][5:7] == ["in_data_type", "out_data_type"]


# --- headers.py -----------------------------------------------------------------------


def _fake_source_tarball(path: Path, make_recipe: str) -> Path:
    """A tiny stand-in for linux-source: just the members headers.py extracts."""
    files = {
        "Makefile": f"headers_install:\n\t{make_recipe}\n",
        "scripts/Makefile.headersinst": "",
        "include/uapi/linux/iommufd.h": "/* fake */\n",
        "arch/x86/include/uapi/asm/types.h": "",
        headers.SELFTEST_HEADER: "/* selftest */\n",
        "tools/testing/selftests/iommu/iommufd.c": "/* selftests */\n",
    }
    with tarfile.open(path, "w:xz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"linux-source-7.3/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


INSTALL = (
    "mkdir -p $(INSTALL_HDR_PATH)/include && cp -r include/uapi/linux $(INSTALL_HDR_PATH)/include/"
)


def test_headers_are_built_once_then_served_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = _fake_source_tarball(tmp_path / "linux-source-7.3.tar.xz", INSTALL)
    cache, log = tmp_path / "cache", io.StringIO()
    tree = headers.ensure_uapi_tree(tarball, cache=cache, arch="x86", log=log)
    assert (tree.include_dir / "linux/iommufd.h").read_text() == "/* fake */\n"
    assert tree.iommufd_test_h.read_text() == "/* selftest */\n"
    assert tree.root.parent == cache
    assert str(tarball.stat().st_size) in tree.root.name
    assert [p.name for p in cache.iterdir() if p.name.startswith(".tmp-")] == []
    assert "make headers_install ARCH=x86" in log.getvalue()
    assert (tree.source_dir / headers.SELFTEST_HEADER).read_text() == "/* selftest */\n"

    real_run = subprocess.run

    def only_dpkg_query(argv: list[str], **kwargs: Any) -> Any:
        assert argv[0] == "dpkg-query", f"a warm cache ran {argv}"
        return real_run(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", only_dpkg_query)
    assert headers.ensure_uapi_headers(tarball, cache=cache, log=None) == tree.include_dir


def test_a_failed_install_raises_and_leaves_nothing_behind(tmp_path: Path) -> None:
    tarball = _fake_source_tarball(tmp_path / "linux-source-7.3.tar.xz", "echo broken >&2; false")
    cache = tmp_path / "cache"
    with pytest.raises(headers.UapiHeadersError, match=r"(?s)make headers_install failed.*broken"):
        headers.ensure_uapi_tree(tarball, cache=cache, arch="x86", log=None)
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_missing_tarball_names_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(headers.UapiHeadersError, match=r"not found; scripts/setup\.sh"):
        headers.ensure_uapi_tree(tmp_path / "absent.tar.xz", cache=tmp_path, log=None)


def test_a_missing_compiler_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = _fake_source_tarball(tmp_path / "linux-source-7.3.tar.xz", INSTALL)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "gcc" else real_which(tool))
    with pytest.raises(headers.UapiHeadersError, match=r"missing tool\(s\) gcc.*scripts/setup\.sh"):
        headers.ensure_uapi_tree(tarball, cache=tmp_path / "cache", arch="x86", log=None)


def test_kernel_arch_maps_machines_and_refuses_unknown_ones() -> None:
    assert headers.kernel_arch("x86_64") == "x86"
    assert headers.kernel_arch("aarch64") == "arm64"
    with pytest.raises(headers.UapiHeadersError, match="sparc64"):
        headers.kernel_arch("sparc64")


def test_cache_root_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert headers.cache_root() == tmp_path / "viommu-harness" / "uapi-headers"
