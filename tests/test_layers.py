"""The package stays layered: no module imports from a layer above its own.

Every import of every module counts, those inside functions (lazy imports) included; only imports
under ``if TYPE_CHECKING:`` are skipped (they never run). A module belongs to the layer of the
longest prefix listed in ``LAYERS``. An import from a higher layer fails the test, naming both
modules and the line: move the code down, or pass the object in from above.
"""

from __future__ import annotations

import ast
import os

import pytest

import hf_sparse

PACKAGE_DIR = os.path.dirname(os.path.abspath(hf_sparse.__file__))

# Bottom to top. A module may import from its own layer and the ones below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # tensors, masks, targets, allocation, the mask engine; atomic file writes (a leaf utility)
    ("core", ("hf_sparse.core", "hf_sparse.io.files")),
    # model surgery on plain modules: sparse inference layers, ResNet DyReLU and weight sharing
    ("surgery", ("hf_sparse.inference", "hf_sparse.vision.dyrelu", "hf_sparse.vision.weight_sharing")),
    # pruning methods, their registry and the sparse-aware defaults they declare
    ("methods", ("hf_sparse.methods",)),
    # what the user asks: the config, named presets, and the public aliases of the registry
    ("config", ("hf_sparse.config", "hf_sparse.presets", "hf_sparse.registry", "hf_sparse.recipe")),
    # checkpoints: save, load, formats, training state, Hub, card
    ("io", ("hf_sparse.io",)),
    # the config-built engine and the engine of a sparse LoRA base
    ("engine", ("hf_sparse.sparsifier", "hf_sparse.lora")),
    ("training", ("hf_sparse.training", "hf_sparse.testing_utils")),
    ("applications", ("hf_sparse.reporting", "hf_sparse.oneshot", "hf_sparse.vision", "hf_sparse.inference.serving")),
    ("commands", ("hf_sparse.commands",)),
    ("top", ("hf_sparse",)),
]
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}
#: Deprecated aliases that must keep an old public name working where it used to live: {module: {target}}.
DEPRECATED_ALIASES = {"hf_sparse.core.sparsifier": {"hf_sparse.sparsifier"}}
#: Attributes of the root package that are plain values (not lazily imported public names).
ROOT_VALUES = {"__version__"}


def layer_of(module: str) -> str:
    best, best_len = None, -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = name, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def all_modules() -> dict[str, str]:
    """``{module name: file}`` for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                parts = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


MODULES = all_modules()


def is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST):
    """Import nodes that can run: everything but the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if is_type_checking(node):
            children = list(node.orelse)
        stack.extend(children)


def imported_modules(module: str, path: str) -> list[tuple[str, int]]:
    """``(hf_sparse module, line)`` for each import in ``module``."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in runtime_imports(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "hf_sparse"]
            continue
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        if target.split(".")[0] != "hf_sparse":
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in MODULES:
                out.append((sub, node.lineno))
            elif not (target == "hf_sparse" and alias.name in ROOT_VALUES):
                out.append((target, node.lineno))
    return out


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above(module):
    own = layer_of(module)
    upward = [
        f"{module} ({own}) line {line} imports {target} ({layer_of(target)})"
        for target, line in imported_modules(module, MODULES[module])
        if RANK[layer_of(target)] > RANK[own] and target not in DEPRECATED_ALIASES.get(module, ())
    ]
    assert not upward, "\n".join(upward)


def test_the_walk_sees_lazy_imports_and_skips_type_checking(tmp_path):
    """The checker itself: a lazy import inside a function is found; a TYPE_CHECKING one is not."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..training import trainer\n"
        "def f():\n    from ..training.trainer import SparseTrainer\n"
    )
    found = imported_modules("hf_sparse.core.m", str(source))
    assert found == [("hf_sparse.training.trainer", 5)]
    assert RANK[layer_of("hf_sparse.training.trainer")] > RANK[layer_of("hf_sparse.core.m")]
