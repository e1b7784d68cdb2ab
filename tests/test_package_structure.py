"""The package's shape: imports only point down, names load lazily, and
`import keras_ov2` / `ov2 --help` load no backend."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "keras_ov2"

# Lower numbers sit lower: a module may import only from strictly lower
# levels (or from its own subpackage), so no circle can form between them.
LEVELS = {
    "version": 0, "lazy_exports": 0, "variants": 0, "durable": 0,
    "flops": 1,
    "preset_table": 2,
    "layers": 3, "data": 3,
    "preset_generation": 4, "models": 4,  # the scenes' words come from data
    "distribution": 5, "evaluation": 5, "convert": 5,
    "training": 6,
    "cli": 7,
    "__init__": 8,  # the public facade: `keras_ov2.<Name>`
}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def owner(module):
    """The top-level part of keras_ov2 a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_module(dotted):
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").exists()


def imports_of(path, top_level_only=False):
    """The keras_ov2 modules `path` imports, at the top or also inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from package import submodule` needs the submodule, not the package's names
            found.update(f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}")
                         else node.module for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "keras_ov2" or m.startswith("keras_ov2.")}


def source_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "presets" not in p.parts)


def test_the_level_table_covers_every_part_of_the_package():
    parts = {owner(module_name(path)) for path in source_files()}
    assert parts == set(LEVELS)


def test_imports_only_point_down():
    upward = []
    for path in source_files():
        source = owner(module_name(path))
        for target in imports_of(path):
            goal = owner(target)
            if goal != source and LEVELS[goal] >= LEVELS[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}: {source} "
                              f"(level {LEVELS[source]}) imports {target} (level {LEVELS[goal]})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_no_circle_between_modules():
    """Module by module (top-level imports only: a function's import runs late)."""
    graph = {module_name(path): imports_of(path, top_level_only=True)
             for path in source_files()}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return trail + [nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [" -> ".join(c) for c in map(cycle_from, graph) if c]
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def lazy_packages():
    """(package, its lazy export table) for every package using lazy_exports."""
    found = []
    for init in PACKAGE.rglob("__init__.py"):
        package = importlib.import_module(module_name(init))
        getter = getattr(package, "__getattr__", None)
        if getter is not None:
            found.append((package, getter.exports))
    return found


def test_lazy_names_resolve_and_never_shadow_a_submodule():
    packages = lazy_packages()
    assert {p.__name__ for p, _ in packages} >= {"keras_ov2", "keras_ov2.data",
                                                 "keras_ov2.evaluation"}
    for package, table in packages:
        folder = Path(package.__file__).parent
        for name, module in table.items():
            if module != f"{package.__name__}.{name}":
                assert not (folder / f"{name}.py").exists(), (
                    f"{package.__name__}.{name} is both an export and a submodule")
            assert getattr(package, name) is not None
            assert name in dir(package)


def run_python(code, **env):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=PACKAGE.parent, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_keras_ov2_loads_no_tensorflow_and_no_backend(backend):
    done = run_python("import sys, keras_ov2; print(sorted(m for m in ('tensorflow', "
                      "'keras', 'keras_hub', 'jax', 'torch') if m in sys.modules))",
                      KERAS_BACKEND=backend)
    assert done.stdout.strip() == "[]"


def test_ov2_help_loads_no_keras_and_prints_no_logs():
    code = ("import sys\nfrom keras_ov2.cli.main import build_parser\n"
            "for command in ([], ['pretrain'], ['eval'], ['data', 'build'], ['convert']):\n"
            "    try:\n        build_parser().parse_args(command + ['--help'])\n"
            "    except SystemExit:\n        pass\n"
            "print('loaded', [m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules])")
    done = run_python(code)
    assert done.stdout.strip().endswith("loaded []")
    assert done.stderr == ""


def test_openvision2_never_imports_openvision1():
    """v1 is the baseline built on v2's parts (its preprocessor extends the
    captioner's); OpenVision 2 itself needs nothing of v1."""
    crossing = [f"{path.name} imports {m}"
                for path in sorted((PACKAGE / "models" / "openvision2").glob("*.py"))
                for m in imports_of(path) if m.startswith("keras_ov2.models.openvision1")]
    assert not crossing
