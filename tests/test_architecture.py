"""The layout's own rules, checked on the source: no import cycles between visionfit's modules
(counting imports inside functions and under TYPE_CHECKING too: a cycle there is still two modules
that need each other), no private name imported from another module, and a CLI that starts
without torch."""

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
