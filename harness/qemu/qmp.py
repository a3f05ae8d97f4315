"""A synchronous QMP session over ``qemu.qmp``'s asyncio client.

The client runs in a private event-loop thread, so events are collected continuously
(each stamped with the host's monotonic time) while the caller blocks on commands or
waits for an event by name and payload.  Every command, reply and event is appended to
a JSON-lines transcript for the artifacts directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from qemu.qmp import EventListener, QMPClient, QMPError, Runstate
from qemu.qmp.qmp_client import ExecuteError

from harness.errors import HarnessError

T = TypeVar("T")


class QmpError(HarnessError):
    """A QMP command failed or the connection is gone."""


class _WatchAbortError(Exception):
    """The watch callback gave a reason to stop waiting."""


class QmpCommandError(QmpError):
    """QEMU answered a command with an error (``error_class`` as in QMP)."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event with the host's monotonic time of arrival."""

    name: str
    data: dict[str, Any]
    received: float
    timestamp: dict[str, int]

    def matches(self, name: str, match: Mapping[str, Any] | None) -> bool:
        if self.name != name:
            return False
        return all(self.data.get(k) == v for k, v in (match or {}).items())


def _as_dict(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


class QmpSession:
    """Connected QMP monitor of one QEMU process."""

    def __init__(
        self,
        transcript: Path | None = None,
        watch: Callable[[], str | None] | None = None,
        poll: float = 0.25,
    ) -> None:
        #: polled while a command waits: a returned reason (QEMU died, QEMU is stopped)
        #: ends the wait at once with that reason instead of the command's timeout
        self.watch = watch
        self._poll = poll
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp", daemon=True)
        self._thread.start()
        self._client = QMPClient("harness")
        self._events: list[QmpEvent] = []
        self._cond = threading.Condition()
        self._disconnected = False
        self._listener: EventListener | None = None
        self._pump: concurrent.futures.Future[None] | None = None
        self._transcript: TextIO | None = open(transcript, "a") if transcript else None  # noqa: SIM115
        self._tlock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------

    def _run(
        self,
        coro: Coroutine[Any, Any, T],
        timeout: float | None,
        watch: Callable[[], str | None] | None = None,
    ) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                step = left if watch is None else min(self._poll, left or self._poll)
                try:
                    return fut.result(step)
                except TimeoutError:
                    if watch is not None and (reason := watch()):
                        raise _WatchAbortError(reason) from None
        except (TimeoutError, _WatchAbortError):
            fut.cancel()
            raise

    def _log(self, kind: str, payload: Any) -> None:
        if self._transcript is None:
            return
        line = json.dumps({"t": round(time.time(), 6), kind: payload}, default=str)
        with self._tlock:
            self._transcript.write(line + "\n")
            self._transcript.flush()

    async def _pump_events(self, listener: EventListener) -> None:
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(listener.get(), 0.2)
                except TimeoutError:
                    if self._client.runstate != Runstate.RUNNING:
                        return
                    continue
                event = QmpEvent(
                    name=str(msg["event"]),
                    data=_as_dict(msg.get("data")),
                    received=time.monotonic(),
                    timestamp=_as_dict(msg.get("timestamp")),
                )
                self._log("event", {"event": event.name, "data": event.data})
                with self._cond:
                    self._events.append(event)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._disconnected = True
                self._cond.notify_all()

    # -- public API ---------------------------------------------------------------------

    def connect(
        self,
        socket_path: Path,
        timeout: float = 10.0,
        abort: Callable[[], str | None] | None = None,
    ) -> None:
        """Connect (retrying until QEMU listens) and negotiate.

        ``abort`` is polled between attempts: when it returns a reason (QEMU exited),
        connecting stops with that reason instead of waiting out the timeout.
        """
        deadline = time.monotonic() + timeout
        last: Exception | str | None = None
        while time.monotonic() < deadline:
            if abort is not None and (reason := abort()):
                raise QmpError(f"no QMP connection on {socket_path}: {reason}")
            if socket_path.exists():
                try:
                    self._run(self._client.connect(str(socket_path)), timeout)
                    break
                except (OSError, EOFError, QMPError) as exc:
                    last = exc
            time.sleep(0.05)
        else:
            raise QmpError(f"no QMP connection on {socket_path} within {timeout:.0f}s: {last}")
        listener = EventListener()
        self._client.register_listener(listener)
        self._listener = listener
        self._pump = asyncio.run_coroutine_threadsafe(self._pump_events(listener), self._loop)
        self._log("connected", str(socket_path))

    def execute(
        self,
        command: str,
        args: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        *,
        watched: bool = True,
    ) -> Any:
        """Run a QMP command and return its ``return`` value.

        While waiting, ``watch`` (unless ``watched=False``) is polled; a lost connection
        is reported with the reason ``watch`` gives (e.g. ``QEMU killed by signal 9``).
        """
        self._log("command", {"execute": command, "arguments": dict(args or {})})
        watch = self.watch if watched else None
        try:
            reply = self._run(self._client.execute(command, dict(args or {})), timeout, watch)
        except ExecuteError as exc:
            self._log("error", {"class": exc.error_class, "desc": str(exc)})
            raise QmpCommandError(command, exc.error_class, exc.error.error.desc) from None
        except _WatchAbortError as exc:
            self._log("aborted", str(exc))
            raise QmpError(f"{command}: {exc}") from None
        except TimeoutError:
            self._log("timeout", command)
            raise QmpError(f"{command}: no reply within {timeout:.0f}s") from None
        except Exception as exc:  # connection-level failures from qemu.qmp
            self._log("failure", repr(exc))
            raise QmpError(f"{command}: {self._why_lost(exc)}") from None
        self._log("return", reply)
        return reply

    def _why_lost(self, exc: BaseException) -> str:
        """The connection-level failure, with the watcher's reason once QEMU is gone."""
        text = f"{type(exc).__name__}: {exc}"
        if self.watch is None:
            return text
        deadline = time.monotonic() + 2.0  # the exit is seen shortly after the EOF
        while (reason := self.watch()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"connection lost: {reason} ({text})" if reason else text

    @property
    def disconnected(self) -> bool:
        with self._cond:
            return self._disconnected

    def events(self, name: str | None = None, since: float = 0.0) -> list[QmpEvent]:
        """Events received at or after monotonic time ``since``, optionally by name."""
        with self._cond:
            return [e for e in self._events if e.received >= since and name in (None, e.name)]

    def wait_event(
        self,
        name: str,
        match: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        since: float = 0.0,
        abort: Callable[[], str | None] | None = None,
    ) -> QmpEvent:
        """Block until an event ``name`` whose data contains ``match`` arrives.

        ``abort`` is polled and, when it returns a reason, the wait ends with QmpError.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events:
                    if event.received >= since and event.matches(name, match):
                        return event
                if self._disconnected:
                    raise QmpError(f"QMP connection closed while waiting for {name}")
                reason = abort() if abort else None
                if reason:
                    raise QmpError(f"gave up waiting for {name}: {reason}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QmpError(f"no {name} event {dict(match or {})} within {timeout:.0f}s")
                self._cond.wait(min(left, 0.2))

    def close(self) -> None:
        """Disconnect and stop the event-loop thread; safe to call twice."""
        if self._loop.is_closed():
            return
        if self._loop.is_running():
            with contextlib.suppress(Exception):  # the peer may already be gone
                self._run(self._client.disconnect(), 5.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()
        if self._transcript is not None:
            self._transcript.close()
            self._transcript = None
