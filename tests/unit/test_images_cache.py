"""The image cache: atomic publication, interrupted builds, and locking between processes."""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness.images.cache import Cache, content_key, default_root, read_meta
from harness.images.errors import ImageBuildError
from harness.images.progress import StreamProgress

pytestmark = pytest.mark.tier0


def writes_file(staging: Path, log: Path) -> dict[str, Any]:
    log.write_text("building\n")
    (staging / "artifact.bin").write_bytes(b"data")
    return {"kind": "test"}


def test_build_publishes_and_reuses(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    calls = []

    def builder(staging: Path, log: Path) -> dict[str, Any]:
        calls.append(staging)
        return writes_file(staging, log)

    first = cache.build("kernel", "x86_64-abc", builder)
    second = cache.build("kernel", "x86_64-abc", builder)
    assert first == second == tmp_path / "kernel" / "x86_64-abc"
    assert len(calls) == 1
    assert (first / "artifact.bin").read_bytes() == b"data"
    assert (first / "build.log").read_text() == "building\n"
    assert read_meta(first) == {"kind": "test"}
    assert cache.lookup("kernel", "x86_64-abc") == first
    assert not list((tmp_path / "tmp").iterdir())


def test_failed_build_leaves_no_artifact_but_keeps_the_log(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def fails(staging: Path, log: Path) -> dict[str, Any]:
        (staging / "half.bin").write_bytes(b"half")
        log.write_text("error: it broke\n")
        raise ImageBuildError("compile", "it broke", log)

    with pytest.raises(ImageBuildError, match=r"compile: it broke; log: .*kernel-k\.log"):
        cache.build("kernel", "k", fails)
    assert cache.lookup("kernel", "k") is None
    assert not (tmp_path / "kernel" / "k").exists()
    assert not list((tmp_path / "tmp").iterdir())
    assert cache.log_path("kernel", "k").read_text() == "error: it broke\n"


def test_interrupted_build_is_not_mistaken_for_finished(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    stale = tmp_path / "tmp" / "rootfs-r.12345"
    stale.mkdir(parents=True)
    (stale / "initramfs.cpio").write_bytes(b"partial")
    half_published = tmp_path / "rootfs" / "r2"
    half_published.mkdir(parents=True)
    (half_published / "initramfs.cpio").write_bytes(b"no meta: never published by rename")
    assert cache.lookup("rootfs", "r") is None
    assert cache.lookup("rootfs", "r2") is None
    cache.build("rootfs", "r", writes_file)
    assert not stale.exists()
    assert cache.lookup("rootfs", "r") is not None


def test_keyboard_interrupt_cleans_the_staging_directory(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def interrupted(staging: Path, log: Path) -> dict[str, Any]:
        (staging / "x").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.build("src", "s", interrupted)
    assert cache.lookup("src", "s") is None
    assert not list((tmp_path / "tmp").iterdir())


def _build_in_child(root: str, counter: str) -> None:
    def slow(staging: Path, log: Path) -> dict[str, Any]:
        with open(counter, "a") as stream:
            stream.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return writes_file(staging, log)

    Cache(Path(root)).build("kernel", "shared", slow)


def test_concurrent_builders_wait_instead_of_colliding(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_build_in_child, args=(str(tmp_path / "cache"), str(counter)))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1
    assert Cache(tmp_path / "cache").lookup("kernel", "shared") is not None


def test_waiting_for_a_lock_names_the_holder(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    stream = io.StringIO()
    progress = StreamProgress(stream, is_tty=False)
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    release = context.Event()

    def hold() -> None:
        with cache.lock("kernel-build"):
            ready.set()
            release.wait(10)

    holder = context.Process(target=hold)
    holder.start()
    assert ready.wait(10)

    def release_soon() -> None:
        time.sleep(0.3)
        release.set()

    context.Process(target=release_soon).start()
    with cache.lock("kernel-build", progress):
        pass
    holder.join(10)
    assert f"waiting for kernel-build (held by pid {holder.pid}" in stream.getvalue()


def test_stats_round_trip_and_tolerate_garbage(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    assert cache.read_stats("kernel-arm64") == {}
    cache.write_stats("kernel-arm64", {"steps": 2293})
    assert cache.read_stats("kernel-arm64") == {"steps": 2293}
    (tmp_path / "stats" / "kernel-arm64.json").write_text("{not json")
    assert cache.read_stats("kernel-arm64") == {}


def test_content_key_ignores_dict_order() -> None:
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIOMMU_IMAGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    assert default_root() == Path("/x/cache/viommu-harness/images")
    monkeypatch.setenv("VIOMMU_IMAGE_CACHE", "/y")
    assert default_root() == Path("/y")
