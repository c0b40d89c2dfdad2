"""The house's layering, read from the source: plugins reach the host only through its public
modules, and the host's modules import one another without a cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The contract for plugin authors (docs/PLUGINS.md): everything else in bench/ may change.
PUBLIC = {"bench", "bench.api", "bench.hookspecs", "bench.losses", "bench.testing", "bench.errors", "bench.measure",
          "bench.textfiles"}
PLUGIN_SOURCES = ["plugins", "hrkd_plugin/hrkd_plugin", "examples/kd-bench-logit-mse/bench_logit_mse.py"]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, those under `if TYPE_CHECKING:` left out (types only);
    `from package import name` counts as an import of `package.name` too (it may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def python_files(relative: str) -> list[Path]:
    path = ROOT / relative
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


def private_imports(path: Path) -> list[str]:
    """`file:line: module` for each import of a non-public module of the host."""
    def public(module: str) -> bool:  # the module itself, or a name that one of them holds
        parent = module.rpartition(".")[0]
        return module in PUBLIC or (parent in PUBLIC and parent != "bench")

    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: {module}"
            for line, module in imported_modules(path) if module.split(".")[0] == "bench" and not public(module)]


def test_the_public_import_check_sees_internals_in_every_form(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from bench.api import Distiller\nfrom bench import hookspecs\nimport bench.losses\n"
                      "from bench.grid.runner import Runner\nfrom bench import cache\nimport bench.training.loop\n")
    assert [line.rpartition(": ")[2] for line in private_imports(plugin)] == [
        "bench.grid.runner", "bench.grid.runner.Runner", "bench.cache", "bench.training.loop"]


@pytest.mark.parametrize("source", PLUGIN_SOURCES)
def test_plugins_import_only_the_public_modules_of_the_host(source):
    files = python_files(source)
    assert files, f"{source} holds no Python files: update PLUGIN_SOURCES"
    private = [line for path in files for line in private_imports(path)]
    assert not private, "plugins import internals of the host:\n" + "\n".join(private)


def test_the_host_modules_import_one_another_without_a_cycle():
    graph = {}
    for path in sorted((ROOT / "bench").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for _, m in imported_modules(path) if m.startswith("bench.") and m != name}
    graph = {name: imports & set(graph) for name, imports in graph.items()}  # modules, not the names they hold
    assert len(graph) > 20 and "bench.grid.runner" in graph["bench.commands.run"]  # the graph was read

    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_sub_packages_stand_in_layers():
    """No two sub-packages of bench/ import each other (type-only imports aside): the parts of a
    run never reach back up into what orchestrates them."""
    packages = {p.name for p in (ROOT / "bench").iterdir() if (p / "__init__.py").is_file()}
    uses: dict[tuple[str, str], list[str]] = {}
    for path in sorted((ROOT / "bench").rglob("*.py")):
        here = path.relative_to(ROOT / "bench").parts[0]
        for line, module in imported_modules(path):
            there = module.split(".")[1] if module.startswith("bench.") else None
            if here in packages and there in packages and there != here:
                uses.setdefault((here, there), []).append(f"{path.relative_to(ROOT)}:{line}: {module}")
    both = [f"{a} <-> {b}: {uses[(a, b)][0]}; {uses[(b, a)][0]}" for a, b in uses if (b, a) in uses and a < b]
    assert len(packages) >= 6 and not both, "sub-packages that import each other:\n" + "\n".join(both)
