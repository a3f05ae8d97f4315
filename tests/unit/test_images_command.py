"""``images`` CLI and the ensure()/lookup() API, with the builders replaced by fakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.images import kernel as kernel_module
from harness.images import pipeline
from harness.images import rootfs as rootfs_module
from harness.images.cache import Cache
from harness.images.errors import ImageBuildError, ImageNotBuiltError
from harness.images.kernel import KernelSource
from harness.images.progress import NullProgress, StreamProgress
from harness.images.rootfs import INITRAMFS

pytestmark = pytest.mark.tier0


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cache:
    """An empty cache, a fake source package and a fixed toolchain: no host tools needed."""
    monkeypatch.setenv("VIOMMU_IMAGE_CACHE", str(tmp_path / "cache"))
    tarball = tmp_path / "linux-source-7.3.tar.xz"
    tarball.write_bytes(b"")
    source = KernelSource("linux-source-7.3", tarball, "7.3.4-1~bpo13+1")
    monkeypatch.setattr(kernel_module, "find_source", lambda: source)
    monkeypatch.setattr(kernel_module, "toolchain", lambda spec: "gcc 12")
    return Cache(tmp_path / "cache")


def fake_builders(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    def build_rootfs(spec: Any, flavor: str, key: str, *args: Any) -> dict[str, Any]:
        staging = args[1]
        calls.append(f"rootfs {spec.name}")
        (staging / INITRAMFS).write_bytes(b"07070100")
        return {"size": 8}

    def extract_source(cache: Cache, source: KernelSource, progress: Any) -> Path:
        calls.append("src")
        return Path("/nonexistent/src")

    def build_kernel(spec: Any, key: str, fragments: Any, tree: Any, c: Any, staging: Path,
                     *args: Any, **options: Any) -> dict[str, Any]:  # fmt: skip
        calls.append(f"kernel {spec.name}")
        (staging / spec.image_target).write_bytes(b"MZ")
        (staging / "config").write_text("CONFIG_IOMMUFD=y\n")
        return {"size": 2, "release": "7.3.4-viommu-harness"}

    monkeypatch.setattr(rootfs_module, "build_rootfs", build_rootfs)
    monkeypatch.setattr(kernel_module, "extract_source", extract_source)
    monkeypatch.setattr(kernel_module, "build_kernel", build_kernel)


def test_ensure_builds_once_then_returns_the_cached_image(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    fake_builders(monkeypatch, calls)
    image = pipeline.ensure("arm64", progress=NullProgress(), cache=cache)
    assert calls == ["rootfs arm64", "src", "kernel arm64"]
    again = pipeline.ensure("arm64", progress=NullProgress(), cache=cache)
    assert calls == ["rootfs arm64", "src", "kernel arm64"]
    assert again == image
    assert image.kernel.name == "Image" and image.kernel.read_bytes() == b"MZ"
    assert image.initramfs.name == INITRAMFS
    assert image.console == "ttyAMA0"
    assert image.cmdline == ("console=ttyAMA0", "panic=-1")
    assert image.ready_marker == "VIOMMU-HARNESS-READY"
    assert image.uefi_firmware is not None
    assert image.kernel_release == "7.3.4-viommu-harness"
    assert set(image.logs) == {"kernel", "rootfs"}
    assert pipeline.lookup("arm64", cache=cache) == image


def test_lookup_of_a_cold_cache_says_how_to_build(cache: Cache) -> None:
    with pytest.raises(
        ImageNotBuiltError, match=r"x86_64/default image not built .*kernel x86_64-"
    ):
        pipeline.lookup("x86_64", cache=cache)


def test_failed_build_reports_log_and_tail(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(spec: Any, flavor: str, key: str, recipe: Any, staging: Path, log: Path,
               progress: Any) -> dict[str, Any]:  # fmt: skip
        log.write_text("Get:1 libc6\nE: Unable to locate package nonsense\n")
        raise ImageBuildError("mmdebstrap", "exited with status 1", log)

    monkeypatch.setattr(rootfs_module, "build_rootfs", broken)
    with pytest.raises(ImageBuildError, match=r"mmdebstrap: exited with status 1; log: "):
        pipeline.ensure("x86_64", progress=StreamProgress(is_tty=False), cache=cache)
    err = capsys.readouterr().err
    assert "FAILED: mmdebstrap" in err
    assert "    E: Unable to locate package nonsense" in err
    assert cache.entries("rootfs") == []


def test_cli_path_prints_json(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_builders(monkeypatch, [])
    pipeline.ensure("arm64", progress=NullProgress(), cache=cache)
    assert cli.main(["images", "path", "--arch", "arm64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"kernel", "rootfs", "config", "logs", "uefi_firmware", "ready_marker"}
    assert data["rootfs"] == data["initramfs"]
    assert data["console"] == "ttyAMA0"
    assert Path(data["config"]).read_text() == "CONFIG_IOMMUFD=y\n"


def test_cli_path_on_a_cold_cache_fails_in_one_line(
    cache: Cache, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["images", "path", "--arch", "x86_64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("harness images: error: x86_64/default image not built")
    assert err.count("\n") == 1


def test_cli_build_rejects_bad_arguments(cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["images", "build", "--arch", "x86_64", "--jobs", "0"]) == 1
    assert "--jobs must be at least 1" in capsys.readouterr().err
    assert cli.main(["images", "build", "--arch", "x86_64", "--flavor", "nope"]) == 1
    assert "unknown image flavor 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["images", "build", "--arch", "sparc"])


def test_cli_build_all_builds_both_arches(
    cache: Cache, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    fake_builders(monkeypatch, calls)
    assert cli.main(["images", "build", "--arch", "all"]) == 0
    assert calls == ["rootfs x86_64", "src", "kernel x86_64", "rootfs arm64", "src", "kernel arm64"]
    assert cli.main(["images", "build", "--arch", "all"]) == 0
    assert len(calls) == 6
