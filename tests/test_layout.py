"""The package's shape: no import cycles, no imports hidden inside functions, modest modules."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "hpjax"


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
    """The hpjax modules ``name`` imports at module level (``from hpjax import plan`` counts as
    importing ``hpjax.plan``)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hpjax"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found - {name}


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items() if n != "hpjax"}
    # the package's __init__ only re-exports the public API; it is not part of the graph
    graph = {n: {m for m in deps if m != "hpjax"} for n, deps in graph.items()}
    visiting, done = set(), set()

    def visit(node, chain):
        if node in visiting:
            pytest.fail("import cycle: " + " -> ".join(chain[chain.index(node) :] + [node]))
        if node in done:
            return
        visiting.add(node)
        for dep in sorted(graph.get(node, ())):
            visit(dep, chain + [node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_the_engine_imports_nothing_above_it():
    modules = _modules()
    allowed = ("hpjax.engine", "hpjax.models", "hpjax.errors")
    for name, path in modules.items():
        if name.startswith("hpjax.engine"):
            bad = [m for m in _imports(name, path, modules) if not m.startswith(allowed)]
            assert not bad, f"{name} imports {bad}"


def test_no_hpjax_imports_inside_functions():
    """Heavy third-party imports (mnist1d, scikit-learn) may wait until used; an hpjax import
    inside a function would be dodging a cycle."""

    def names(n):
        return [n.module or ""] if isinstance(n, ast.ImportFrom) else [a.name for a in n.names]

    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [
                    n
                    for n in ast.walk(node)
                    if isinstance(n, ast.Import | ast.ImportFrom)
                    and any(m.startswith("hpjax") for m in names(n))
                ]
                assert not inner, f"{path.name}: {node.name} imports hpjax inside a function"


def test_modules_stay_small():
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path


def test_functions_stay_short():
    """80 lines at most."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path.name}: {node.name} has {length} lines"


def _config_reads(path: pathlib.Path) -> list[str]:
    """Where ``config`` or ``cfg`` (a study's ConfigDict) is read: ``config.KEY`` or
    ``config.get(...)`` in code (strings naming keys to a user do not count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("config", "cfg")
        ):
            found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_the_config_is_read_by_its_parsers_alone():
    """Parse once: below the binaries only modules named config.py or spec.py read the
    ConfigDict; the engine, the models and the results read no config at all."""
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("config.py", "spec.py"):
            continue
        reads = _config_reads(path)
        gets = [r for r in reads if r.endswith(".get")]
        assert not gets, gets
        if path.relative_to(PACKAGE).parts[0] in ("engine", "models", "results"):
            assert not reads, reads
