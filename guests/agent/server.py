"""The guest side of the agent: dispatch requests to registered methods, report errors.

A guest-side exception is returned with its type, message, errno (for OSError) and
traceback, plus any extra attributes an exception carries (e.g. the ioctl name), so
the host can raise an error that says exactly what failed inside the guest.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

from guests.agent.protocol import PROTOCOL_VERSION, ProtocolError, decode, encode

Method = Callable[..., Any]
_METHODS: dict[str, Method] = {}

#: modules whose ``@method`` functions make up the agent's API; in addition every module
#: of the package ``harness.scenarios.guest`` (the guest halves of scenarios) is loaded.
METHOD_MODULES = ("guests.agent.system", "guests.agent.pci")
SCENARIO_PACKAGE = "harness.scenarios.guest"


def method(fn: Method) -> Method:
    """Register ``fn`` under ``module_suffix.name`` (e.g. ``system.run``)."""
    _METHODS[f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"] = fn
    return fn


def _load_methods() -> None:
    for name in METHOD_MODULES:
        importlib.import_module(name)
    try:
        package = importlib.import_module(SCENARIO_PACKAGE)
    except ModuleNotFoundError:
        return
    for info in pkgutil.iter_modules(package.__path__, SCENARIO_PACKAGE + "."):
        importlib.import_module(info.name)


def error_payload(exc: BaseException) -> dict[str, Any]:
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
        return {"id": req_id, "result": {"protocol": PROTOCOL_VERSION, "methods": sorted(_METHODS)}}
    fn = _METHODS.get(name)
    if fn is None:
        return {"id": req_id, "error": {"type": "UnknownMethod", "message": f"no method {name!r}"}}
    try:
        return {"id": req_id, "result": fn(**params)}
    except Exception as exc:  # every failure goes back to the host
        return {"id": req_id, "error": error_payload(exc)}


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Answer requests until the host closes the channel."""
    _load_methods()
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
