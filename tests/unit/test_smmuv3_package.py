"""harness.smmuv3 as a package: public API present, standard library only (it ships into guests)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import harness.smmuv3 as smmuv3

pytestmark = pytest.mark.tier0

PACKAGE = Path(smmuv3.__file__).parent


def test_public_api_is_exported() -> None:
    for name in smmuv3.__all__:
        assert hasattr(smmuv3, name), name
    for name in ("decode_event", "encode_event", "SmmuEvent", "predict_idrs"):
        assert name in smmuv3.__all__


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_imports_are_standard_library_only(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top in sys.stdlib_module_names or module == "harness.errors", module
