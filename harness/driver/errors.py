"""The driver's failures: one exception for a refused call, one for a broken expectation.

``IoctlError`` is raised by every operation the kernel refuses (an ioctl, or a read /
write on a queue fd): it names the operation, the errno and the arguments passed.
``expect_errno(errno, fn, ...)`` is the *expects errno N* form of any operation, like
the kernel selftests' ``test_err_*``; a wrong errno or an unexpected success raises
``ExpectError`` naming the operation, what was expected and what happened.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from harness.errors import HarnessError

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


#: the kernel's spelling where Python's errorcode picks an alias (ENOTSUP, EDEADLOCK)
_KERNEL_NAMES = {errno_mod.EOPNOTSUPP: "EOPNOTSUPP", errno_mod.EDEADLK: "EDEADLK"}


def errno_name(err: int) -> str:
    """``EINVAL`` for 22; ``success`` for 0; the number for anything unknown."""
    if err == 0:
        return "success"
    return _KERNEL_NAMES.get(err) or errno_mod.errorcode.get(err, str(err))


def describe(arg: object) -> str:
    """A short repr of an ioctl argument (a uAPI struct, bytes or an int)."""
    if isinstance(arg, bytes | bytearray | memoryview):
        data = bytes(arg)
        text = data[:64].hex()
        return f"<{len(data)} bytes {text}{'...' if len(data) > 64 else ''}>"
    return repr(arg)


class IoctlError(HarnessError, OSError):
    """The kernel refused ``ioctl`` (or a read/write on a queue fd) with ``errno``."""

    def __init__(self, ioctl: str, err: int, args_repr: str = "") -> None:
        OSError.__init__(self, err, os.strerror(err))
        self.ioctl = ioctl
        self.errno_name = errno_name(err)
        self.args_repr = args_repr
        #: entries the kernel reports as processed (IOMMU_HWPT_INVALIDATE only)
        self.entries_done: int | None = None

    def __str__(self) -> str:
        text = f"{self.ioctl}: {self.errno_name} ({self.strerror})"
        if self.entries_done is not None:
            text += f", entry_num={self.entries_done} done"
        return f"{text}; args: {self.args_repr}" if self.args_repr else text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.ioctl, self.errno, self.args_repr))


class ExpectError(HarnessError, AssertionError):
    """An operation did not fail the way ``expect_errno`` was told it would."""

    def __init__(self, ioctl: str, expected: int, got: int, args_repr: str = "") -> None:
        self.ioctl = ioctl
        self.expected = expected
        self.got = got
        self.expected_name = errno_name(expected)
        self.errno_name = errno_name(got)
        self.args_repr = args_repr
        text = f"{ioctl}: expected {self.expected_name}, got {self.errno_name}"
        super().__init__(f"{text}; args: {args_repr}" if args_repr else text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.ioctl, self.expected, self.got, self.args_repr))


def issues(ioctl: str) -> Callable[[F], F]:
    """Mark a driver method with the ioctl it issues (named by ``expect_errno`` on success)."""

    def mark(fn: F) -> F:
        fn.ioctl_name = ioctl  # type: ignore[attr-defined]
        return fn

    return mark


def operation_name(fn: Callable[..., Any]) -> str:
    """The ioctl ``fn`` issues if it says so, else its qualified name."""
    name = getattr(fn, "ioctl_name", None)
    if isinstance(name, str):
        return name
    return str(getattr(fn, "__qualname__", repr(fn)))


def dispose(result: object) -> None:
    """Free what an unexpectedly successful call created (best effort)."""
    close = getattr(result, "close", None)
    if callable(close):
        with contextlib.suppress(OSError, HarnessError):
            close()


def expect_errno(
    expected: int, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> IoctlError:
    """Call ``fn`` and require it to fail with ``expected``; returns the error for inspection."""
    try:
        result = fn(*args, **kwargs)
    except IoctlError as exc:
        if exc.errno == expected:
            return exc
        raise ExpectError(exc.ioctl, expected, exc.errno or 0, exc.args_repr) from exc
    dispose(result)
    shown = ", ".join([*map(describe, args), *(f"{k}={describe(v)}" for k, v in kwargs.items())])
    raise ExpectError(operation_name(fn), expected, 0, shown)
