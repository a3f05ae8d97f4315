"""The guest side of the agent: dispatch requests to registered methods, report errors.

A guest-side exception is returned with its type, message, errno (for OSError) and
traceback, plus any extra attributes an exception carries (e.g. the ioctl name), so
the host can raise an error that says exactly what failed inside the guest.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from guests.agent.protocol import PROTOCOL_VERSION, ProtocolError, decode, encode

Method = Callable[..., Any]
_METHODS: dict[str, Method] = {}

#: built-in method modules; every module of ``SCENARIO_PACKAGE`` (the guest halves of
#: scenarios) is available too.  Modules are imported on first use: compiling Python
#: is slow under TCG, and a broken guest half must not take the agent down.
BUILTIN_MODULES = {"system": "guests.agent.system", "pci": "guests.agent.pci"}
SCENARIO_PACKAGE = "harness.scenarios.guest"
_MODULES: dict[str, str] = {}
_LOADED: set[str] = set()
_LOAD_ERRORS: dict[str, str] = {}


def method(fn: Method) -> Method:
    """Register ``fn`` under ``module_suffix.name`` (e.g. ``system.run``)."""
    _METHODS[f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"] = fn
    return fn


def _discover() -> None:
    _MODULES.update(BUILTIN_MODULES)
    try:
        package = importlib.import_module(SCENARIO_PACKAGE)
    except ModuleNotFoundError:
        return
    # os.listdir rather than pkgutil: importing pkgutil costs a TCG guest ~0.2 s per start
    for directory in package.__path__:
        for entry in sorted(os.listdir(directory)):
            name, dot, suffix = entry.partition(".")
            if dot and suffix == "py" and name.isidentifier() and not name.startswith("_"):
                _MODULES.setdefault(name, f"{SCENARIO_PACKAGE}.{name}")


def _lookup(name: str) -> Method | None:
    """The method ``module.function``, importing its module on first use."""
    module = name.split(".", 1)[0]
    if module in _MODULES and module not in _LOADED and module not in _LOAD_ERRORS:
        try:
            importlib.import_module(_MODULES[module])
            _LOADED.add(module)
        except Exception as exc:
            _LOAD_ERRORS[module] = f"{type(exc).__name__}: {exc}"
    return _METHODS.get(name)


def error_payload(exc: BaseException) -> dict[str, Any]:
    import traceback  # only on errors: it is slow to import under TCG

    payload: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    if isinstance(exc, OSError):
        payload["errno"] = exc.errno
    for attr in ("ioctl", "errno_name", "field", "args_repr"):
        value = getattr(exc, attr, None)
        if isinstance(value, str | int):
            payload[attr] = value
    return payload


def handle(request: dict[str, Any]) -> dict[str, Any]:
    req_id = request.get("id")
    name = request.get("method")
    params = request.get("params") or {}
    if not isinstance(name, str) or not isinstance(params, dict):
        return {"id": req_id, "error": {"type": "ProtocolError", "message": "bad request"}}
    if name == "agent.hello":
        result = {"protocol": PROTOCOL_VERSION, "modules": sorted(_MODULES)}
        return {"id": req_id, "result": result}
    fn = _lookup(name)
    if fn is None:
        why = _LOAD_ERRORS.get(name.split(".", 1)[0])
        message = f"no method {name!r}" + (f" (its module failed to load: {why})" if why else "")
        return {"id": req_id, "error": {"type": "UnknownMethod", "message": message}}
    try:
        return {"id": req_id, "result": fn(**params)}
    except Exception as exc:  # every failure goes back to the host
        return {"id": req_id, "error": error_payload(exc)}


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Answer requests until the host closes the channel."""
    _discover()
    while True:
        line = inp.readline()
        if not line:
            return 0
        try:
            request = decode(line)
        except ProtocolError as exc:
            reply: dict[str, Any] = {
                "id": None,
                "error": {"type": "ProtocolError", "message": str(exc)},
            }
        else:
            reply = handle(request)
        try:
            data = encode(reply)
        except TypeError as exc:
            data = encode({"id": reply.get("id"), "error": error_payload(exc)})
        out.write(data)
        out.flush()


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
