"""The package's shape stays what the README and the docstrings say: no import cycle between its modules, a
config that builds without torch, the rewards or `preprocess`, and a README Development tree that lists every
module (and no module that is gone)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("omni_grpo", "preprocess")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package by its __init__.py)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported_names(path: Path, package: str) -> set[str]:
    """Every module name imported anywhere in the file (`from a import b` gives a and a.b), relative imports
    resolved. A package's `__getattr__` (a lazy re-export of its own submodules, PEP 562) is left out."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef) and child.name == "__getattr__" and path.name == "__init__.py":
                continue
            if isinstance(child, ast.Import):
                names.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                names.add(base)
                names.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level or inside a function)."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for imported in _imported_names(path, package):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle_between_package_modules():
    """An import inside a function counts too: it hides a cycle rather than removing it."""
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    module = tmp_path / "convert.py"
    module.write_text("import os\n\n\ndef f():\n    from .schema import TrainConfig\n")
    assert _imported_names(module, "omni_grpo.config") == {
        "os",
        "omni_grpo.config.schema",
        "omni_grpo.config.schema.TrainConfig",
    }


def test_a_config_builds_without_torch_rewards_models_or_preprocess():
    code = (
        "import sys\n"
        "from omni_grpo.config import check_paths, load_config, reference_markdown, save_config\n"
        "load_config(None, ['model_name_or_path=m', 'reward_funcs=[format, accuracy]', 'lora.enabled=true'])\n"
        "reference_markdown()\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = result.stdout.split()
    heavy = [
        m
        for m in loaded
        if m.split(".")[0] in ("torch", "preprocess", "transformers")
        or m.startswith(("omni_grpo.rewards", "omni_grpo.models", "omni_grpo.data_check"))
    ]
    assert "omni_grpo.config.loading" in loaded and not heavy, heavy


# ------------------------------------------------------------------------------------------ README tree


def readme_tree() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Development\n", 1)[1]
    return section.split("```\n", 2)[1]


def tree_modules(tree: str) -> set[str]:
    """Files the tree names, as paths: a top-level `dir/` line opens a directory, an indented `sub/` line a
    subdirectory whose continuation lines (indented further) name its files."""
    named, top, sub = set(), "", ""
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        first = line.split()[0]
        if indent == 0:
            top, sub = (first if first.endswith("/") else ""), ""
        elif indent == 2:
            sub = first if first.endswith("/") else ""
        named.update(top + sub + name for name in re.findall(r"(?<![\w/.])(\w+\.py)\b", line))
    return named


def test_the_readme_tree_lists_every_module():
    """Every module of the packages (not the __init__.py files) is named in the README's Development tree, in
    its directory; every file the tree names under the packages exists."""
    named = tree_modules(readme_tree())
    modules = {str(p.relative_to(REPO)) for p in module_files().values() if p.name != "__init__.py"}
    in_packages = {n for n in named if n.startswith(tuple(f"{p}/" for p in PACKAGES))}
    missing = sorted(modules - named)
    gone = sorted(in_packages - modules - {str(p.relative_to(REPO)) for p in module_files().values()})
    assert not missing and not gone, (
        f"README Development tree: add {', '.join(missing) or 'nothing'}; remove {', '.join(gone) or 'nothing'}"
    )


def test_the_tree_parser_reads_subdirectories_and_continuation_lines():
    tree = (
        "pkg/\n"
        "  sub/            a.py (x) · b.py\n"
        "                  c.py\n"
        "  d.py  e.py      words (f.py inside words counts)\n"
        "other/          g.py\n"
    )
    assert tree_modules(tree) == {
        "pkg/sub/a.py",
        "pkg/sub/b.py",
        "pkg/sub/c.py",
        "pkg/d.py",
        "pkg/e.py",
        "pkg/f.py",
        "other/g.py",
    }
