"""``harness fleet deploy``: this checkout, its pinned dependencies and guest images on each host.

Per host, over the same SSH the cluster uses (asyncssh, key-only, known hosts checked):

1. the host's ``python3`` must be this Python's major.minor (Dask needs one version);
2. a wheelhouse is built here once per host arch: a wheel of this checkout (built from a
   copy, nothing written into the checkout) and wheels of its pinned dependencies
   (``distributed``, ``asyncssh``, ...), so hosts need no package index;
3. it is streamed (tar over SSH) to the host, installed into ``PREFIX`` (a venv made with
   the host's ``python3``), together with the image recipe files the image keys are
   computed from (``images/``, ``guests/init/``), beside the installed package;
4. the installed harness must report the controller's versions (harness + code digest,
   ``distributed``, Python): a mismatch is refused in one line;
5. guest images (content-addressed kernel and rootfs directories) the host lacks, or
   holds with other contents, are streamed from this machine's cache and checked by
   sha256 on arrival; a host whose arch this machine has no image for builds its own.

``python -m harness.fleet.deploy manifest|receive KIND NAME`` is the host side of 5.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.fleet.merge import safe_extract
from harness.fleet.spec import Fleet, Host

MANIFEST = ".fleet-manifest.json"
#: what goes into the build copy of the checkout
SOURCES = ("pyproject.toml", "README.md", "harness", "guests", "images")
#: recipe trees the image keys depend on, installed beside the package
RECIPES = ("images", "guests/init")
PIP_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


#: this deploy's manifests of the controller's image directories (hashed once per run)
_LOCAL_MANIFESTS: dict[Path, dict[str, str]] = {}


class DeployError(HarnessError):
    """A host could not be deployed (one line naming the host and why)."""


def _log(text: str) -> None:
    print(f"[deploy] {text}", file=sys.stderr, flush=True)


def checkout_root() -> Path:
    """The source checkout this harness runs from."""
    import harness

    root = Path(harness.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise DeployError(f"{root} is not a source checkout (no pyproject.toml)")
    return root


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in ("__pycache__", ".mypy_cache") or n.endswith(".pyc")}


def build_wheelhouse(dest: Path, machine: str, python: str) -> dict[str, str]:
    """Wheels of this checkout and its dependencies for ``machine`` / ``python`` (X.Y),
    and the recipe trees under ``dest/recipes``; the identity of what was copied."""
    from harness.fleet.version import identity

    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    root = checkout_root()
    with tempfile.TemporaryDirectory(prefix="viommu-fleet-build-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in SOURCES:
            path = root / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=_ignore)
            elif path.is_file():
                shutil.copy2(path, src / name)
        shipped = identity(src)  # of the copy: the checkout may change meanwhile
        for recipe in RECIPES:
            shutil.copytree(src / recipe, dest / "recipes" / recipe, ignore=_ignore)
        _pip(["wheel", "--no-deps", "-w", str(wheels), str(src)])
    wheel = next(wheels.glob("viommu_harness-*.whl"))
    dest = wheels
    local = PIP_ARCH.get(platform.machine(), platform.machine())
    here = ".".join(platform.python_version_tuple()[:2])
    if PIP_ARCH.get(machine, machine) == local and python == here:
        _pip(["wheel", "-w", str(dest), str(wheel)])
    else:
        _pip(["download", "--only-binary=:all:", "--python-version", python,
              "--platform", f"manylinux2014_{PIP_ARCH.get(machine, machine)}",
              "--implementation", "cp", "-d", str(dest), *dependencies()])  # fmt: skip
    return shipped


def dependencies() -> list[str]:
    """The ``[project] dependencies`` of this checkout (with their pins)."""
    import tomllib

    data = tomllib.loads((checkout_root() / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def _pip(args: Sequence[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "-q", *args], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        raise DeployError(f"pip {args[0]}: {(lines or ['failed'])[-1].strip()}")


def tar_bytes(entries: dict[str, Path]) -> bytes:
    """A gzip'd tar of ``{name in archive: file or directory}``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, path in entries.items():
            tar.add(path, arcname=name, filter=lambda t: None if "__pycache__" in t.name else t)
    return buf.getvalue()


def manifest(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every regular file under ``directory`` ({} if none)."""
    out: dict[str, str] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            out[str(path.relative_to(directory))] = digest.hexdigest()
    return out


def image_tar(directory: Path, digests: dict[str, str]) -> bytes:
    """An image directory as a tar whose first member is its sha256 manifest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = json.dumps(digests).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(directory, arcname=".")
    return buf.getvalue()


async def _run(conn: Any, host: Host, command: str, data: bytes | None = None) -> str:
    result = await conn.run(command, input=data, encoding=None if data else "utf-8",
                            check=False)  # fmt: skip
    out = result.stdout.decode() if isinstance(result.stdout, bytes) else result.stdout or ""
    err = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr or ""
    if result.exit_status != 0:
        last = [ln for ln in err.splitlines() if ln.strip()] or [f"exit {result.exit_status}"]
        raise DeployError(f"{host.name}: {command.split()[0]}...: {last[-1].strip()}")
    return str(out)


async def deploy_host(
    fleet: Fleet, host: Host, houses: dict[tuple[str, str], tuple[Path, dict[str, str]]],
    arches: Sequence[str] | None,
    images: bool, lock: asyncio.Lock,
) -> None:  # fmt: skip
    """Deploy one host (see the module docstring); DeployError naming the host on failure."""
    from harness.fleet.cluster import ssh_connect
    from harness.fleet.version import identity, mismatch

    conn = await ssh_connect(fleet, host)
    try:
        facts = (await _run(conn, host, "python3 -c 'import platform; print(platform.machine(),"
                            " *platform.python_version_tuple()[:2])'")).split()  # fmt: skip
        machine, python = facts[0], ".".join(facts[1:3])
        here = ".".join(platform.python_version_tuple()[:2])
        if python != here:
            raise DeployError(f"{host.name}: python3 is {python}, the controller's is {here}"
                              " (Dask needs one Python version across the fleet)")  # fmt: skip
        async with lock:
            if (machine, python) not in houses:
                base = Path(tempfile.mkdtemp(prefix="viommu-fleet-wheels-"))
                _log(f"building the wheelhouse for {machine} / Python {python}")
                shipped = await asyncio.to_thread(build_wheelhouse, base, machine, python)
                houses[(machine, python)] = (base, shipped)
        house, shipped = houses[(machine, python)]
        entries = {"wheels": house / "wheels", "recipes": house / "recipes"}
        payload = await asyncio.to_thread(tar_bytes, entries)
        prefix = shlex.quote(host.prefix)
        incoming = f"{prefix}/.incoming"
        py = f"{prefix}/bin/python"
        _log(f"{host.name}: installing into {host.prefix} ({len(payload) >> 20} MiB)")
        await _run(conn, host, f"rm -rf {incoming} && mkdir -p {incoming} && "
                   f"tar -xzf - -C {incoming}", payload)  # fmt: skip
        script = (
            f"set -e; [ -x {py} ] || python3 -m venv {prefix}; "
            f"W=$(ls {incoming}/wheels/viommu_harness-*.whl); "
            f"{py} -m pip install -q --no-index --find-links {incoming}/wheels $W; "
            f"{py} -m pip install -q --no-index --no-deps --force-reinstall $W; "
            f"S=$({py} -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'); "
            f"rm -rf $S/images $S/guests/init; cp -r {incoming}/recipes/images $S/images; "
            f"cp -r {incoming}/recipes/guests/init $S/guests/init; rm -rf {incoming}"
        )
        await _run(conn, host, f"sh -c {shlex.quote(script)}")
        out = await _run(conn, host, f"{py} -c 'import json; from harness.fleet.version "
                         "import identity; print(json.dumps(identity()))'")  # fmt: skip
        problem = mismatch(shipped, json.loads(out.strip().splitlines()[-1]))
        if problem:
            raise DeployError(f"{host.name}: {problem}")
        if images:
            await _images(conn, host, py, arches)
        _log(f"{host.name}: ready ({shipped['harness']})")
        if shipped != identity():
            _log(f"{host.name}: note: this checkout changed while deploying; deploy again")
    finally:
        conn.close()


async def _images(conn: Any, host: Host, py: str, arches: Sequence[str] | None) -> None:
    from harness.images import ImageNotBuiltError, lookup
    from harness.images.errors import PrerequisiteError

    for arch in arches or ("x86_64", "arm64"):
        try:
            image = lookup(arch)
        except (ImageNotBuiltError, PrerequisiteError, HarnessError):
            note = "" if arches is None else " (asked for)"
            _log(f"{host.name}: no {arch} image here{note}: the host builds its own on first use")
            continue
        for directory in (image.kernel.parent, image.initramfs.parent):
            kind, name = directory.parent.name, directory.name
            if directory not in _LOCAL_MANIFESTS:
                _LOCAL_MANIFESTS[directory] = await asyncio.to_thread(manifest, directory)
            local = _LOCAL_MANIFESTS[directory]
            remote = json.loads(await _run(conn, host, f"{py} -m harness.fleet.deploy manifest"
                                           f" {kind} {name}"))  # fmt: skip
            if remote == local:
                _log(f"{host.name}: {kind}/{name} present (sha256 match)")
                continue
            _log(f"{host.name}: copying {kind}/{name}")
            payload = await asyncio.to_thread(image_tar, directory, local)
            await _run(conn, host, f"{py} -m harness.fleet.deploy receive {kind} {name}",
                       payload)  # fmt: skip


def deploy(
    fleet: Fleet, hosts: Sequence[Host], *, arches: Sequence[str] | None = None,
    images: bool = True,
) -> list[str]:  # fmt: skip
    """Deploy ``hosts`` in parallel; the one-line failures (empty when all are ready)."""
    if fleet.local:
        raise DeployError("a local fleet runs from this checkout: nothing to deploy")

    _LOCAL_MANIFESTS.clear()

    async def all_hosts() -> list[BaseException | None]:
        houses: dict[tuple[str, str], tuple[Path, dict[str, str]]] = {}
        lock = asyncio.Lock()
        try:
            return await asyncio.gather(
                *(deploy_host(fleet, h, houses, arches, images, lock) for h in hosts),
                return_exceptions=True,
            )
        finally:
            for base, _ in houses.values():
                shutil.rmtree(base, ignore_errors=True)

    failures = []
    for host, result in zip(hosts, asyncio.run(all_hosts()), strict=True):
        if isinstance(result, HarnessError):
            failures.append(str(result))
            print(f"harness fleet deploy: {result}", file=sys.stderr)
        elif isinstance(result, BaseException):
            raise result
        else:
            print(f"{host.name}: deployed to {host.prefix}")
    return failures


# --- host side -------------------------------------------------------------------------


def _artifact(kind: str, name: str) -> Path:
    from harness.images.cache import Cache

    if kind not in ("kernel", "rootfs") or "/" in name or name.startswith("."):
        raise DeployError(f"bad image artifact {kind}/{name}")
    return Cache().artifact(kind, name)


def receive(kind: str, name: str, stream: Any) -> None:
    """Unpack a tar from ``stream`` into the image cache, checking every file's sha256."""
    final = _artifact(kind, name)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.incoming-", dir=final.parent))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            safe_extract(tar, staging)
        want = json.loads((staging / MANIFEST).read_text())
        got = manifest(staging)
        if got != want:
            bad = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got.get(k)]
            raise DeployError(f"{kind}/{name}: sha256 mismatch after copy ({bad[0]})")
        (staging / MANIFEST).unlink()
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    """Host side: ``manifest KIND NAME`` prints JSON; ``receive KIND NAME`` reads a tar."""
    try:
        if len(argv) == 3 and argv[0] == "manifest":
            print(json.dumps(manifest(_artifact(argv[1], argv[2]))))
            return 0
        if len(argv) == 3 and argv[0] == "receive":
            receive(argv[1], argv[2], sys.stdin.buffer)
            return 0
    except HarnessError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    print("usage: python -m harness.fleet.deploy manifest|receive KIND NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
