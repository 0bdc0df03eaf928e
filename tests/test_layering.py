"""The import directions of the package, read from the source with ``ast``.

Every module of ``noisybench`` has a layer; a module may import modules of its own layer or
below, never above, and no two modules may import each other (directly or through a chain).
``baselines/`` is written against the public API only. A new module must be given a layer
here, which is the moment to decide what it may depend on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "noisybench"

# layer: what it is. Lower layers know nothing of higher ones.
LAYERS: dict[str, int] = {
    # 0: leaves (errors, the method contract and its helpers, metrics, atomic files)
    "noisybench": 0,
    "noisybench.errors": 0,
    "noisybench.io": 0,
    "noisybench.method": 0,
    "noisybench.metrics": 0,
    "noisybench.augment": 0,
    "noisybench.schedules": 0,
    "noisybench.rng": 0,
    "noisybench.stores": 0,
    "noisybench.losses": 0,
    "noisybench.distributed": 0,
    "noisybench.safety": 0,  # the allow-list of _target_s (issue 20)
    "noisybench.provenance": 0,
    "noisybench.processes": 0,
    # 1: data, models, methods, and the configuration
    "noisybench.config": 1,
    "noisybench.data": 1,
    "noisybench.models": 1,
    "noisybench.methods": 1,
    "noisybench.teachers": 1,  # Bayesian teachers for KD (issue 27)
    "noisybench.evaluation": 1,
    "noisybench.tb": 1,
    # 2: the training loop
    "noisybench.engine": 2,
    # 3: what is around training: building, run directories, callbacks
    "noisybench.build": 3,
    "noisybench.rundir": 3,
    "noisybench.callbacks": 3,
    "noisybench.selected": 3,
    "noisybench.trackers": 3,
    # 4: one run; reports over many
    "noisybench.run": 4,
    "noisybench.report": 4,
    "noisybench.leaderboard": 4,
    "noisybench.evaluate": 4,
    "noisybench.figures": 4,
    # 5: the command line
    "noisybench.cli": 5,
    "noisybench.suite": 5,
    "noisybench.__main__": 5,
}
# What baselines/ (the comparison methods) may import from noisybench.
PUBLIC_API = {
    "noisybench.method",
    "noisybench.errors",
    "noisybench.augment",
    "noisybench.metrics",
    "noisybench.io",
    "noisybench.teachers",  # the teacher contract KD distils from (issue 27)
}
# The engine is training only: no configuration, files or run directories.
ENGINE_NEVER_IMPORTS = {
    "noisybench.config",
    "noisybench.rundir",
    "noisybench.io",
    "noisybench.callbacks",
    "noisybench.build",
    "noisybench.run",
    "noisybench.cli",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every noisybench module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m == "noisybench" or m.startswith("noisybench.")}


def _known(name: str, modules: set[str]) -> str | None:
    """The module ``name`` refers to (``from noisybench import metrics`` names a module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _layer(module: str) -> int | None:
    """The layer of ``module`` or of the nearest enclosing package listed (the bare package
    ``noisybench`` covers only its ``__init__``)."""
    name = module
    while name and name != "noisybench":
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
    return LAYERS["noisybench"] if module == "noisybench" else None


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = {_known(m, set(files)) for m in _imports(path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


GRAPH = _graph()


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in GRAPH if _layer(m) is None)
    assert not missing, f"give these modules a layer in tests/test_layering.py: {missing}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    own = _layer(module)
    up = sorted(t for t in GRAPH[module] if (_layer(t) or 0) > (own or 0))
    assert not up, f"{module} (layer {own}) imports higher layers: {up}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            # A package's __init__ importing its own submodules is not a cycle of layers.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycle.extend([*stack, node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*stack, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(GRAPH):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def test_the_engine_knows_no_files_config_or_run_directory() -> None:
    assert not GRAPH["noisybench.engine"] & ENGINE_NEVER_IMPORTS


def test_nothing_imports_the_command_line() -> None:
    users = sorted(m for m, deps in GRAPH.items() if "noisybench.cli" in deps)
    assert users == ["noisybench.__main__"]


@pytest.mark.parametrize("path", sorted((ROOT / "baselines").glob("*.py")), ids=lambda p: p.stem)
def test_baselines_use_only_the_public_api(path: Path) -> None:
    used = {_known(m, set(GRAPH)) or m for m in _imports(path)}
    used = {m for m in used if not m.startswith("noisybench.baselines")}
    assert used <= PUBLIC_API, f"{path.name} imports {sorted(used - PUBLIC_API)}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The parser finds imports at any depth (so the tests above can fail)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from noisybench.run import run_experiment\n")
    assert "noisybench.run" in _imports(source)
