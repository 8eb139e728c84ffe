"""Every public name has an entry in the API reference (docs/reference/*.md).

The public names are the `__all__` of each public package (`qdbpool` and every package
under it whose name has no leading underscore: `qdbpool.factories`, `qdbpool.testing`,
`qdbpool.dsn`, ...) and of `qdbpool.testing`'s own modules (`qdbpool.testing.postgres`,
`.mariadb`, ...), which tests import directly. A name has an entry when a mkdocstrings
directive (`::: dotted.path`) on a reference page documents that very object, or, for a
plain value such as `CLEAN` or `DEFAULT_PORTS` (which mkdocstrings cannot tell from its
type), when a reference page names it in backticks.

So a new public name without a reference entry fails here, with the line to add.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
from pathlib import Path

import pytest

import qdbpool
import qdbpool.testing

REPO = Path(__file__).resolve().parents[2]
REFERENCE = sorted((REPO / "docs" / "reference").glob("*.md"))
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)
PLAIN_VALUES = (int, float, str, bytes, tuple, frozenset, dict, list)


def _public_modules() -> list[str]:
    names = ["qdbpool"]
    for info in pkgutil.walk_packages(qdbpool.__path__, "qdbpool."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts):
            continue
        if info.ispkg or info.name.startswith("qdbpool.testing."):
            names.append(info.name)
    return sorted(names)


def _resolve(path: str) -> list[object]:
    """What a directive may name. `qdbpool.with_conn` is both a module and the function
    the package exports under that name: both count."""
    parts = path.split(".")
    found: list[object] = []
    # Module first: the longest importable prefix, then attributes.
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            target = getattr(target, attr)
        found.append(target)
        break
    # Attribute first: from the top package down, importing a submodule only when needed.
    target = importlib.import_module(parts[0])
    for depth, attr in enumerate(parts[1:], start=2):
        if not hasattr(target, attr):
            importlib.import_module(".".join(parts[:depth]))
        target = getattr(target, attr)
    found.append(target)
    return found


def _reference() -> tuple[list[object], str]:
    texts = [page.read_text() for page in REFERENCE]
    documented = [
        obj for text in texts for path in DIRECTIVE.findall(text) for obj in _resolve(path)
    ]
    return documented, "\n".join(texts)


def _public_names() -> list[tuple[str, str]]:
    pairs = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        pairs += [(module_name, name) for name in getattr(module, "__all__", ())]
    return pairs


def test_the_packages_are_found() -> None:
    # The walk must see the packages this test is about, or it would check nothing.
    modules = _public_modules()
    for expected in ("qdbpool.factories", "qdbpool.testing", "qdbpool.testing.postgres"):
        assert expected in modules
    assert qdbpool.testing.__all__


PUBLIC_NAMES = _public_names()


@pytest.mark.parametrize(
    ("module_name", "name"), PUBLIC_NAMES, ids=[f"{module}.{name}" for module, name in PUBLIC_NAMES]
)
def test_public_name_is_in_the_reference(module_name: str, name: str) -> None:
    documented, text = _reference()
    obj = getattr(importlib.import_module(module_name), name)
    if isinstance(obj, PLAIN_VALUES) and not isinstance(obj, types.ModuleType):
        assert f"`{name}`" in text or any(obj is d for d in documented), (
            f"{module_name}.{name} is public but no page of docs/reference names it: "
            f"mention `{name}` where it belongs"
        )
        return
    assert any(obj is d for d in documented), (
        f"{module_name}.{name} is public but has no entry in docs/reference: add "
        f"'::: {module_name}.{name}' to the page of {module_name}"
    )
