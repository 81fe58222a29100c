"""The package's layout holds: imports point down the layers, no module imports itself back
through others, the package never imports `services`, and the gateway and the CLI start without
either framework."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import twinbench

PACKAGE = Path(twinbench.__file__).parent

# Lowest first. A module may import modules of its own layer or of the layers below it, never
# above: the order is the architecture (README's picture), so a change to it is a design change.
LAYERS = [
    ("twinbench", "twinbench.api", "twinbench.errors", "twinbench.config"),
    ("twinbench.rpc",),
    ("twinbench.serving",),
    ("twinbench.models",),
    ("twinbench.data",),
    ("twinbench.jobs",),
    ("twinbench.training",),
    ("twinbench.frameworks",),
    ("twinbench.trainer", "twinbench.gateway"),
    ("twinbench.client",),
    ("twinbench.experiments",),
    ("twinbench.cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for p in PACKAGE.rglob("*.py")
        if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))
    }


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module of `known` that `path` imports, anywhere in it: at the top, inside functions
    and under TYPE_CHECKING alike (a circle hidden in a function is still a circle)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[
                    : len(name.split(".")) - node.level + (1 if is_package else 0)
                ]
                base = ".".join(parent + ([node.module] if node.module else []))
            # `from a.b import c` imports a.b, and a.b.c when c is a module
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("services"):
                found.add(target)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imported(path, name, known) for name, path in modules.items()}


def layer_of(module: str) -> int:
    best, index = "", -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    return index


def test_every_module_has_a_layer():
    assert [m for m in graph() if layer_of(m) < 0] == []


def test_the_package_never_imports_services():
    offenders = {
        m: sorted(d for d in deps if d.startswith("services")) for m, deps in graph().items()
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_imports_point_down():
    upward = [
        f"{module} -> {dep}"
        for module, deps in graph().items()
        for dep in deps
        if not dep.startswith("services") and layer_of(dep) > layer_of(module)
    ]
    assert upward == []


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import circle, as the modules around it, or [] when there is none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_import_circles():
    edges = {
        m: {d for d in deps if not d.startswith("services") and d != "twinbench"}
        for m, deps in graph().items()
    }
    assert find_cycle(edges) == []


def test_the_cycle_finder_finds_a_planted_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_gateway_and_cli_start_without_either_framework():
    """The gateway image holds neither framework, and `twinbench --help` should not pay for one."""
    code = (
        "import sys, importlib\n"
        "for name in ('services.gateway.__main__', 'twinbench.gateway.router', "
        "'twinbench.gateway.servicer', 'twinbench.cli.main', 'twinbench.client.inputs'):\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
