"""The layout's own rules, checked on the source: no import cycles between visionfit's modules
(counting imports inside functions and under TYPE_CHECKING too: a cycle there is still two modules
that need each other), packages that import only downward through the layers (and no cycle between
packages), no private name imported from another module, and a CLI that starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "visionfit"


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_names(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every `import module` and `from module import name` in the file."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.module, alias.name) for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()

    def owner(name: str) -> str | None:  # the visionfit module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, imported in imported_names(path):
            if not module.startswith("visionfit"):
                continue
            target = owner(f"{module}.{imported}" if imported else module)
            # A package's own modules may import their package (it is already loading).
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


# The layers, top to bottom (ARCHITECTURE.md draws them): a package may import its own layer's
# packages or lower ones, never a higher one. A top-level module or package of visionfit is named
# here by its first name under visionfit ("data" for visionfit.data.memory); the root package
# ("visionfit": `__version__` and the lazy public names) imports nothing.
LAYERS: list[set[str]] = [
    {"__main__", "cli"},
    {"serve", "tune", "doctor", "launch"},
    {"training", "finishing"},
    {
        "inference",
        "inference_model",
        "prediction",
        "evaluation",
        "calibrating",
        "explaining",
        "serialization",
        "importing",
        "export",
        "onnx_checks",
        "onnx_model",
        "quantization",
        "plots",
    },
    {"engine"},
    {"runtime", "distributed"},
    {"config", "recipes"},
    {"data", "models"},
    {"visionfit", "errors", "choices", "paths", "console"},
]


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Which package imports which, from the module graph (a package's own imports left out)."""
    packages: dict[str, set[str]] = {package_of(name): set() for name in graph}
    for name, targets in graph.items():
        packages[package_of(name)] |= {package_of(target) for target in targets} - {package_of(name)}
    return packages


def upward_edges(packages: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """'a -> b' for every import of a package in a higher layer, and 'a: in no layer' for a package
    the layers do not place."""
    depth = {package: level for level, members in enumerate(layers) for package in members}
    problems = [f"{package}: in no layer (add it to LAYERS)" for package in packages if package not in depth]
    problems += [
        f"{package} -> {target}"
        for package, targets in packages.items()
        for target in sorted(targets)
        if package in depth and target in depth and depth[target] < depth[package]
    ]
    return sorted(problems)


def test_packages_import_only_downward_and_have_no_cycles():
    packages = package_graph(import_graph())
    assert {"data", "models", "config", "engine", "training", "cli"} <= set(packages)
    assert upward_edges(packages, LAYERS) == []
    assert cycles(packages) == []


def test_the_layer_check_finds_an_upward_edge_and_an_unplaced_package():
    packages = {"data": {"config"}, "config": {"data"}, "cli": {"config"}, "new": set()}
    layers = [{"cli"}, {"config"}, {"data"}]
    assert upward_edges(packages, layers) == ["data -> config", "new: in no layer (add it to LAYERS)"]
    assert cycles(packages) == [["config", "data"]]


def test_the_module_graph_has_no_cycles():
    graph = import_graph()
    assert len(graph) > 40 and graph["visionfit.training"]  # the walk found the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_from_another_module():
    crossings = [
        f"{name} imports {module}.{imported}"
        for name, path in module_files().items()
        for module, imported in imported_names(path)
        if module.startswith("visionfit")
        and imported
        and imported.startswith("_")
        and imported != "__version__"
    ]
    assert crossings == []


def test_the_command_line_starts_without_torch():
    """`visionfit --help` and argument parsing import nothing heavy (torch, numpy, onnx, fastapi)."""
    script = (
        "import sys; from visionfit.cli import build_parser;"
        "build_parser().parse_args(['train', '--epochs', '1']);"
        "heavy = sorted({'torch', 'numpy', 'onnx', 'onnxruntime', 'fastapi', 'PIL'} & set(sys.modules));"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_command_ends_at_once_unless_a_child_process_is_alive(monkeypatch):
    import multiprocessing

    import visionfit.cli as cli

    class Exited(Exception):
        pass

    def record_exit(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(cli.os, "_exit", record_exit)
    monkeypatch.setattr(multiprocessing, "active_children", lambda: [])
    with pytest.raises(Exited, match="3"):
        cli.run_and_exit()
    monkeypatch.setattr(multiprocessing, "active_children", lambda: ["a DataLoader worker"])
    with pytest.raises(SystemExit) as caught:
        cli.run_and_exit()  # the normal exit, which joins the child
    assert caught.value.code == 3
    monkeypatch.setattr(multiprocessing, "active_children", lambda: [])
    monkeypatch.setattr(cli.sys, "getprofile", lambda: "cProfile")
    with pytest.raises(SystemExit):
        cli.run_and_exit()  # a profiler writes its results at the normal exit
