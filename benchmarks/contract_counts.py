"""The counts issue 38 drives to zero, for a source tree (``python benchmarks/contract_counts.py src``):

- ``probes``: lines outside ``activedet/models/`` that find out what a model is with
  ``hasattr`` / ``getattr`` on an adapter, model or head, torchvision detector classes
  (``isinstance``, an MRO walk, a class-name table) or a torchvision detection import;
- ``adapter_any``: ``adapter: Any`` annotations;
- ``strategy_state``: writes to ``self.<attr>`` (assignment or a mutating call such as
  ``self.x.update(...)``) in strategy methods other than ``__init__`` (per-call state);
- ``params_reads``: ``params[...]``, ``params.get(...)`` or ``self.params`` in ``strategies/``;
- ``undeclared``: adapter attributes read outside ``models/`` (``adapter.X``,
  ``self.adapter.X``, ``m.adapter.X``; ``detector.X`` against ``DetectorAdapter``) that the
  protocols in ``models/base.py`` do not declare;
- ``long_functions``: functions over 60 lines in ``models/``, ``strategies/``, ``training/``.

Each offending line is printed with ``-v``. Exit 0 always: it measures, it does not judge.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PROBE = re.compile(r"(hasattr|getattr)\((adapter|model|head|self\.model|self\.adapter|adapter\.model|"
                   r"getattr\((adapter|model))\b|isinstance\([^,]+, *(torchvision\.)?(RetinaNet|FCOS|FasterRCNN|"
                   r"GeneralizedRCNN)|__mro__|_ARCHS = \{|from torchvision\.models\.detection")
MUTATORS = ("update", "append", "extend", "clear", "pop", "setdefault", "add")


def _lines(pkg: Path, pattern: re.Pattern[str], where: Path, skip: Path | None = None) -> list[str]:
    out = []
    for f in sorted(where.rglob("*.py")):
        if skip is not None and skip in f.parents:
            continue
        for k, line in enumerate(f.read_text().splitlines(), 1):
            if pattern.search(line):
                out.append(f"{f.relative_to(pkg)}:{k}: {line.strip()}")
    return out


def _self_target(node: ast.AST) -> str | None:
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
        targets = [node.func.value]
    for t in targets:
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
            return t.attr
    return None


def strategy_state(pkg: Path) -> list[str]:
    out = []
    for f in sorted((pkg / "strategies").glob("*.py")):
        for cls in [c for c in ast.walk(ast.parse(f.read_text())) if isinstance(c, ast.ClassDef)]:
            for fn in cls.body:
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name == "__init__":
                    continue
                for node in ast.walk(fn):
                    attr = _self_target(node)
                    if attr is not None:
                        out.append(f"{f.relative_to(pkg)}:{node.lineno}: {cls.name}.{fn.name} writes self.{attr}")
    return out


def _declared(tree: ast.Module, name: str) -> set[str]:
    cls = next((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:
        return set()
    return {n.name for n in cls.body if isinstance(n, ast.FunctionDef)} | \
           {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def undeclared(pkg: Path) -> list[str]:
    tree = ast.parse((pkg / "models" / "base.py").read_text())
    plain = _declared(tree, "Adapter")
    detector = plain | _declared(tree, "DetectorAdapter")
    pattern = re.compile(r"\b(?:self\.adapter|m\.adapter|adapter|(detector|self\._detector))\.([A-Za-z_]\w*)")
    used: dict[tuple[str, bool], set[str]] = {}
    for f in sorted(pkg.rglob("*.py")):
        if "models" in f.relative_to(pkg).parts:
            continue
        for m in pattern.finditer(f.read_text()):
            used.setdefault((m.group(2), bool(m.group(1))), set()).add(str(f.relative_to(pkg)))
    return [f"{name}{' (detector)' if det else ''}: {', '.join(sorted(files))}"
            for (name, det), files in sorted(used.items()) if name not in (detector if det else plain)]


def long_functions(pkg: Path) -> list[str]:
    out = []
    for part in ("models", "strategies", "training"):
        for f in sorted((pkg / part).rglob("*.py")):
            for n in ast.walk(ast.parse(f.read_text())):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60:
                    out.append(f"{f.relative_to(pkg)}:{n.lineno}: {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    return out


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "src")
    pkg = src / "activedet"
    counts = {
        "probes": _lines(pkg, PROBE, pkg, skip=pkg / "models"),
        "adapter_any": _lines(pkg, re.compile(r"adapter: Any\b"), pkg),
        "strategy_state": strategy_state(pkg),
        "params_reads": _lines(pkg, re.compile(r"params\[|params\.get\(|self\.params\b"), pkg / "strategies"),
        "undeclared": undeclared(pkg),
        "long_functions": long_functions(pkg),
    }
    for key, rows in counts.items():
        print(f"{key}: {len(rows)}")
        if "-v" in sys.argv:
            for row in rows:
                print(f"    {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
