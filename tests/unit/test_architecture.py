"""The shape of plumbline's imports, read from the source with `ast` (nothing is imported):

- no import cycle among plumbline's modules;
- arrows point one way, down LAYERS: a module imports lower layers and its own package, never a
  higher layer (nothing below definitions imports definitions, automation, assets or ops);
- no import inside a function, except of a heavy library by the step that uses it (HEAVY), of the
  lineage package's emitting modules (EMITTING), and in the CLI entry module, whose commands import
  what they need so that read commands start fast;
- the code location loads without the heavy libraries, OpenLineage's client or Celery (a fresh
  interpreter, then sys.modules): the robust stand-in for "a step process starts on little CPU";
- the CLI's read commands (summary, restatements, dlq list, contracts lint) load neither Dagster nor
  those libraries: the stand-in for "they answer at once" (bench/startup.py measures the time).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestration", "assets", "contracts")

# The layer of each package or module (the longest matching name wins), lowest first.
LAYERS = {
    "contracts": 0,                      # what is allowed: knows nothing of orchestration
    "orchestration": 1,                  # the bare package: imports nothing of its own
    "orchestration.settings": 1, "orchestration.warehouse": 1, "orchestration.catalog": 1, "orchestration.names": 1,
    "orchestration.warehouse_resource": 1,
    "orchestration.ingest": 2, "orchestration.rebuild": 2, "orchestration.quality": 2,
    "orchestration.ml": 3,               # trains and scores in the warehouse (rebuild's partition replacement)
    "orchestration.lineage": 4,          # describes runs of every mechanism: names model versions from ml.registry
    "orchestration.lineage.impact": 5,   # walks the lineage the events carry (lineage.datasets) down to model versions
    "orchestration.resources": 5,        # the deployment's warehouse, model registry and lineage transport
    "assets": 6, "orchestration.automation": 6,
    "orchestration.definitions": 7,
    "orchestration.ops": 8, "orchestration.demo": 8,
    "orchestration.ops.cli": 9,          # the entry point: nothing imports it
}
# Packages of one layer that may import each other (module cycles are still refused): ingest,
# rebuild and quality are one mechanism seen from three sides (a delivery read by ingest is
# rebuilt into partitions whose rejects quality dead-letters), and the base modules are peers.
PEERS = [
    {"orchestration", "orchestration.settings", "orchestration.warehouse", "orchestration.catalog", "orchestration.names",
     "orchestration.warehouse_resource"},
    {"orchestration.ingest", "orchestration.rebuild", "orchestration.quality"},
]
# The only third-party libraries a function may import: each costs a large share of the
# code location's import time and is needed by few steps only (training, scoring, quality checks).
HEAVY = {"sklearn", "scipy", "mlflow", "skops", "great_expectations", "pandas", "numpy", "pyarrow",
         # and what modules of the read commands' path need for definitions or contract validation only:
         # Dagster alone costs more CPU than a read command may take (bench/startup.py)
         "dagster", "jsonschema", "pydantic", "open_data_contract_standard",
         # and what the code location holds but a step process never uses: OpenLineage's client (with requests
         # and httpx2), which only emitting lineage needs, and Celery, which only the production executor needs
         "openlineage", "dagster_celery"}
# Plumbline modules that load OpenLineage's client, which the lineage package imports when it emits, not
# when the code location (whose lineage sensors call it) loads.
EMITTING = {("orchestration.lineage", "orchestration.lineage.events"), ("orchestration.lineage", "orchestration.lineage.spool")}
# Where commands import inside their functions, so that each command loads only what it uses.
CLI = "orchestration.ops.cli"
# Not imported when orchestration.definitions loads; imported by the steps that use them.
NOT_AT_LOAD = ["sklearn", "scipy", "mlflow", "skops", "great_expectations", "pandas", "numpy", "pyarrow",
               "openlineage", "requests", "httpx", "httpx2", "dagster_celery"]
# Not imported by the read commands: they answer from DuckDB alone (contracts lint validates with the ODCS packages).
READ_COMMANDS = [["summary"], ["restatements"], ["dlq", "list"], ["contracts", "lint"]]
NOT_FOR_READS = ["dagster", "psycopg2", *NOT_AT_LOAD]


@cache
def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _target(name: str) -> str | None:
    """The plumbline module an imported name lives in (a name imported from a module is that module)."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Full names an import statement reaches: modules, or module.attribute for `from m import a`."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package
        package = module.split(".") if modules()[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names]


@cache
def imports() -> list[tuple[str, str, int, bool]]:
    """(module, imported name, line, inside a function) for every import statement of every module."""
    out = []
    for module, path in modules().items():
        def visit(node: ast.AST, in_function: bool) -> None:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.extend((module, name, node.lineno, in_function) for name in _imported(module, node))
            inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    return out


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for module, name, _, _ in imports():
        target = _target(name)
        if target and target != module:
            graph[module].add(target)
    return graph


def layer(module: str) -> tuple[str, int]:
    """(the LAYERS entry that places the module, its layer)."""
    key = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len, default=None)
    assert key is not None, f"{module} has no layer: add it (or its package) to LAYERS in {Path(__file__).name}"
    return key, LAYERS[key]


def allowed(source: str, target: str) -> bool:
    (s_key, s_layer), (t_key, t_layer) = layer(source), layer(target)
    if t_layer < s_layer:
        return True
    return t_layer == s_layer and (s_key == t_key or any({s_key, t_key} <= peers for peers in PEERS))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a readable list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_every_module_has_a_layer():
    assert modules(), f"no module found under {ROOT}"
    missing = [m for m in modules() if not any(m == k or m.startswith(k + ".") for k in LAYERS)]
    assert not missing, f"modules with no layer (add them to LAYERS): {missing}"


def test_no_import_cycle():
    found = cycles(edges())
    assert not found, "import cycles among plumbline modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layers():
    upward = sorted({f"{m}:{line} imports {t} ({layer(m)[0]}, layer {layer(m)[1]} -> {layer(t)[0]}, layer {layer(t)[1]})"
                     for m, name, line, _ in imports() if (t := _target(name)) and t != m and not allowed(m, t)})
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_inside_a_function_but_heavy_libraries_and_the_cli():
    inside = sorted({f"{m}:{line} imports {_target(name) or name} inside a function"
                     for m, name, line, in_function in imports() if in_function and m != CLI
                     and ((m, t) not in EMITTING if (t := _target(name)) else name.split(".")[0] not in HEAVY)})
    assert not inside, ("move these imports to the top of their module (only the heavy libraries "
                        f"{sorted(HEAVY)} load inside the step that uses them):\n" + "\n".join(inside))


def test_the_rules_catch_what_they_forbid():
    """The checks above can fail: a cycle, an upward import and a project import inside a function."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not allowed("orchestration.lineage", "orchestration.definitions")
    assert not allowed("orchestration.automation.ml_sensors", "orchestration.ops.sync")
    assert not allowed("orchestration.automation.ml_sensors", "assets.ml")
    assert not allowed("orchestration.ml.registry", "orchestration.lineage.datasets")
    assert not allowed("orchestration.ops.sync", "orchestration.ops.cli")
    assert not allowed("contracts.loader", "orchestration.catalog")
    assert allowed("orchestration.ops.sync", "orchestration.definitions")
    assert allowed("orchestration.rebuild.partitions", "orchestration.quality.dead_letter")


def test_the_code_location_loads_without_heavy_libraries():
    code = ("import json, sys; import orchestration.definitions; "
            f"print(json.dumps([m for m in {NOT_AT_LOAD!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], (f"importing orchestration.definitions loads {loaded}: import them inside the functions "
                          "that use them (python -X importtime -c 'import orchestration.definitions' shows who)")


def test_the_load_check_sees_the_lineage_emitter():
    """The check above can fail: emitting lineage loads OpenLineage's client with requests and httpx2."""
    code = ("import json, sys; import orchestration.definitions, orchestration.lineage.events; "
            f"print(json.dumps([m for m in {NOT_AT_LOAD!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"openlineage", "requests", "httpx2"} <= set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=" ".join)
def test_read_commands_load_no_dagster(argv, tmp_path):
    """Against an empty home (the command stops at NothingSynced) and a synced one alike: the modules
    are imported before the warehouse is opened, so an empty home shows the whole import path."""
    code = ("import json, sys; from orchestration.ops.cli import main; code = main(sys.argv[1:]); "
            f"print(json.dumps([code, [m for m in {NOT_FOR_READS!r} if m in sys.modules]]))")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PLUMBLINE_HOME": str(tmp_path), "PLUMBLINE_DEPLOYMENT": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert code in (0, 1), done.stderr[-3000:]
    assert loaded == [], (f"plumbline {' '.join(argv)} loads {loaded}: import them inside the functions that use "
                          f"them (python -X importtime -m orchestration.ops.cli {' '.join(argv)} shows who)")


def test_the_read_command_check_sees_dagster():
    """The check above can fail: a command that loads the definitions is caught."""
    code = f"import json, sys; import orchestration.definitions; print(json.dumps([m for m in {NOT_FOR_READS!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "dagster" in json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
