"""Imports point down the flow: a module may import from its own layer or the layers below, never above.

The layers (as /work/shared/tools/check_layers.py, and docs/architecture.md):
errors, types, registry, progress -> data -> models -> attacks -> defenses -> targets -> evaluation
-> report -> campaign -> api -> server / cli. ``server`` may import ``api`` (both are shells over it).
A static AST check of every ``medshield`` module: fast, no imports executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medshield

ORDER = ["errors", "types", "registry", "progress", "data", "models", "attacks", "defenses", "targets",
         "evaluation", "report", "campaign", "api", "server", "cli"]
ROOT = Path(medshield.__file__).parent

# Imports that still run up a layer, as (importing module, imported module): none since stage 2 of
# issue 18. Keep it empty; an entry that no longer occurs fails the test too.
KNOWN_UP: set[tuple[str, str]] = set()

# medshield imports that may sit inside a function, as (importing module, imported module), each with its
# reason. Anything else inside a function is a cycle being dodged: move the shared code down instead.
ALLOWED_INSIDE: dict[tuple[str, str], str] = {
    ("medshield.cli.serve", "medshield.server"): "the server extra (fastapi, uvicorn) is optional",
}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "medshield" or len(parts) < 2:
        return None
    name = "cli" if parts[1].startswith("cli") else parts[1]
    return ORDER.index(name) if name in ORDER else None


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        out[".".join(rel.parts).removesuffix(".__init__")] = path
    return out


def imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import in ``path``."""
    tree = ast.parse(path.read_text())
    inner = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module == "medshield":  # from medshield import api
                names = [f"medshield.{a.name}" for a in node.names]
            elif node.level == 0:
                names = [node.module or ""]
            else:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                names = [".".join(base + ([node.module] if node.module else []))]
        else:
            continue
        out += [(name, node.lineno, id(node) in inner) for name in names]
    return out


def upward_imports() -> dict[tuple[str, str], str]:
    found = {}
    for module, path in modules().items():
        me = layer(module)
        for name, line, _ in imports(module, path):
            other = layer(name)
            if me is None or other is None or other <= me:
                continue
            if ORDER[me] == "server" and ORDER[other] == "api":
                continue
            found[(module, name)] = f"{path.relative_to(ROOT.parent)}:{line}"
    return found


def test_every_top_level_module_has_a_layer() -> None:
    tops = {m.split(".")[1] for m in modules() if m.count(".") >= 1}
    unplaced = {t for t in tops if layer(f"medshield.{t}") is None and t not in ("__main__",)}
    assert not unplaced, f"give these modules a layer in ORDER (tests/test_layers.py, docs/architecture.md): {unplaced}"


def test_imports_point_down() -> None:
    found = upward_imports()
    new = {k: v for k, v in found.items() if k not in KNOWN_UP}
    assert not new, "imports that run up a layer:\n" + "\n".join(f"{v}: {a} imports {b}" for (a, b), v in new.items())
    fixed = KNOWN_UP - set(found)
    assert not fixed, f"no longer imported upward, remove from KNOWN_UP: {sorted(fixed)}"


def test_no_medshield_imports_hidden_in_functions() -> None:
    hidden = {(module, name): f"{path.relative_to(ROOT.parent)}:{line}" for module, path in modules().items()
              for name, line, inner in imports(module, path) if inner and layer(name) is not None}
    new = {k: v for k, v in hidden.items() if k not in ALLOWED_INSIDE}
    assert not new, "medshield imports inside functions (move the import to the module top, or the shared code " \
                    "down a layer):\n" + "\n".join(f"{v}: {a} imports {b}" for (a, b), v in new.items())


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a models module importing evaluation is caught."""
    fake = tmp_path / "train.py"
    fake.write_text("import torch\nfrom medshield.evaluation.metrics import point_metrics\n\ndef f():\n    from medshield.api import train\n")
    got = imports("medshield.models.train", fake)
    assert ("medshield.evaluation.metrics", 2, False) in got and ("medshield.api", 5, True) in got
    fake.write_text("from medshield import api\n")
    assert imports("medshield.models.train", fake) == [("medshield.api", 1, False)]
    assert all(layer(name) > layer("medshield.models.train") for name, _, _ in got if name.startswith("medshield"))
