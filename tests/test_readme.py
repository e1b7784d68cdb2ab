"""The README's examples work as written.

- Every ```python block runs in a fresh interpreter whose working directory
  is an empty temporary folder, in the suite's jax run only: the examples
  are backend-neutral Keras code, and what they call (fit, generate, score,
  save_to_preset) is tested on every backend by the unit tests; running the
  two training examples three times would add about 9 minutes to CI. A block
  that cannot run offline or in CI says so in the README, on the line just
  before its fence: `<!-- not run: REASON -->`; it is reported as skipped
  with that reason. A block marked `<!-- continues the previous block -->`
  runs after the previous one, in the same interpreter.
- Every ```python block, run or not, uses public names only: what the
  package `__init__` files export.
- Every `ov2 ...` command in a ```bash block parses (it is not run).
"""

import ast
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import keras
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"^<!--\s*(.*?)\s*-->$")
NOT_RUN = re.compile(r"not run:\s*(.+)", re.S)
CONTINUES = "continues the previous block"

# The packages whose exported names are the public API.
PUBLIC_PACKAGES = {
    "keras_ov2",
    "keras_ov2.convert",
    "keras_ov2.data",
    "keras_ov2.distribution",
    "keras_ov2.evaluation",
    "keras_ov2.flops",
    "keras_ov2.layers",
    "keras_ov2.models",
    "keras_ov2.training",
}


class Block(NamedTuple):
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    not_run: str  # the reason, or "" for a block that runs
    continues: bool


def readme_blocks(text=None):
    """Every fenced block of the README, with the marker before it."""
    text = README.read_text() if text is None else text
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = MARKER.match(before)
        note = marker.group(1) if marker else ""
        not_run = NOT_RUN.match(note)
        blocks.append(Block(
            language=match.group(1),
            code=match.group(2),
            line=line,
            not_run=not_run.group(1).strip() if not_run else "",
            continues=note == CONTINUES,
        ))
        if marker and not (not_run or note == CONTINUES):
            raise ValueError(f"README.md:{line}: unknown marker <!-- {note} -->; use "
                             f"'<!-- not run: REASON -->' or '<!-- {CONTINUES} -->'.")
    return blocks


def python_groups(blocks):
    """The python blocks as runs: a block with its continuations. A run whose
    first block is not run is skipped whole."""
    groups = []
    for block in blocks:
        if block.language != "python":
            if block.not_run or block.continues:
                raise ValueError(f"README.md:{block.line}: a marker before a "
                                 f"```{block.language} block; only python blocks run.")
            continue
        if block.continues:
            if not groups:
                raise ValueError(f"README.md:{block.line}: continues no block.")
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups


GROUPS = python_groups(readme_blocks())


def group_id(group):
    return "L" + "+".join(str(block.line) for block in group)


def run_python(code, folder, timeout=1200):
    script = folder / "readme_block.py"
    script.write_text(code)
    env = {
        **os.environ,
        "KERAS_BACKEND": keras.backend.backend(),
        "HF_HUB_OFFLINE": "1",
        "KERAS_OV2_CACHE": str(folder / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "Agg",
    }
    return subprocess.run([sys.executable, script.name], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_markers_leave_blocks_to_run():
    runnable = [group for group in GROUPS if not group[0].not_run]
    skipped = [group[0] for group in GROUPS if group[0].not_run]
    assert len(runnable) > 0
    for block in skipped:
        assert len(block.not_run) > 5, f"README.md:{block.line}: say why it is not run"
    print("README python blocks not run:")
    for block in skipped:
        print(f"  README.md:{block.line}: {block.not_run}")


def test_markers_are_read():
    text = (
        "Intro.\n\n```python\nx = 1\n```\n\n<!-- continues the previous block -->\n"
        "```python\nprint(x)\n```\n\n<!-- not run: needs the Hub -->\n```python\n"
        "download()\n```\n\n```bash\nov2 presets\n```\n"
    )
    groups = python_groups(readme_blocks(text))
    assert [[block.code for block in group] for group in groups] == [
        ["x = 1\n", "print(x)\n"], ["download()\n"]]
    assert [group[0].not_run for group in groups] == ["", "needs the Hub"]
    with pytest.raises(ValueError, match="unknown marker"):
        readme_blocks("<!-- skip me -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="only python blocks run"):
        python_groups(readme_blocks("<!-- not run: no -->\n```bash\nls\n```\n"))


@pytest.mark.parametrize("group", GROUPS, ids=[group_id(g) for g in GROUPS])
def test_python_block_runs(group, tmp_path):
    if keras.backend.backend() != "jax":
        pytest.skip("README examples run in the jax run of the suite")
    if group[0].not_run:
        pytest.skip(f"README.md:{group[0].line} not run: {group[0].not_run}")
    code = "\n".join(block.code for block in group)
    result = run_python(code, tmp_path)
    assert result.returncode == 0, (
        f"The README block at line {group[0].line} failed on "
        f"{keras.backend.backend()}:\n\n{code}\n"
        f"--- stdout (end) ---\n{result.stdout[-3000:]}\n"
        f"--- stderr (end) ---\n{result.stderr[-6000:]}"
    )


# --- Public names only -------------------------------------------------------


def exported(package, name):
    """Whether `package.name` is part of the public API."""
    if name.startswith("_"):
        return False
    module = importlib.import_module(package)
    if name not in module.__dict__:
        return name in dir(module)  # a lazy export not loaded yet (PEP 562 __dir__)
    value = module.__dict__[name]
    if inspect.ismodule(value):  # a submodule is public only as a package
        return value.__name__ in PUBLIC_PACKAGES
    return True


def private_names(code):
    """`keras_ov2` names in `code` that no public package exports."""
    tree = ast.parse(code)
    aliases = {}  # local name -> public package it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "keras_ov2":
                    continue
                if alias.name not in PUBLIC_PACKAGES:
                    found.append(f"import {alias.name}")
                elif alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases["keras_ov2"] = "keras_ov2"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_ov2"):
            for alias in node.names:
                if node.module not in PUBLIC_PACKAGES or not exported(node.module, alias.name):
                    found.append(f"from {node.module} import {alias.name}")
                elif f"{node.module}.{alias.name}" in PUBLIC_PACKAGES:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in aliases:
            continue
        package = aliases[base.id]
        for name in chain:
            if not exported(package, name):
                found.append(f"{package}.{name}")
                break
            if f"{package}.{name}" not in PUBLIC_PACKAGES:
                break  # a class or function: its attributes are its own
            package = f"{package}.{name}"
    return sorted(set(found))


@pytest.mark.parametrize("block", [b for g in GROUPS for b in g],
                         ids=[f"L{b.line}" for g in GROUPS for b in g])
def test_python_block_uses_public_names(block):
    assert private_names(block.code) == [], (
        f"The README block at line {block.line} uses names that no package "
        "__init__ exports; export them or use the exported ones."
    )


def test_public_name_check_catches_private_paths():
    assert private_names("import keras_ov2\nkeras_ov2.OpenVision2Backbone") == []
    assert private_names("from keras_ov2.training import tidy") == []
    assert private_names("from keras_ov2 import convert\nconvert.load_open_clip") == []
    assert private_names("from keras_ov2.training.pretrain import Stage") == [
        "from keras_ov2.training.pretrain import Stage"]
    assert private_names("import keras_ov2\nkeras_ov2.models.common.caption_loss") == [
        "keras_ov2.models.common"]
    assert private_names("from keras_ov2.evaluation import accuracy") == [
        "from keras_ov2.evaluation import accuracy"]


# --- ov2 commands --------------------------------------------------------------

# An `ov2` command: at the start of a line or after `&&`, `;`, `|` or an
# opening quote, up to the end of the line, a closing quote, `&&`, `;`, `|`
# or a comment.
OV2_COMMAND = re.compile(r"""(?:^|&&|;|\||['"])\s*(ov2\s[^'"&;|#\n]*)""", re.M)


def ov2_commands(code):
    """The argument lists of the `ov2` commands in a shell block."""
    code = re.sub(r"\\\n\s*", " ", code)  # join continued lines
    return [shlex.split(match.group(1))[1:] for match in OV2_COMMAND.finditer(code)]


def test_ov2_commands_are_found():
    assert ov2_commands("python3 -m venv .venv && ov2 pretrain\n") == [["pretrain"]]
    assert ov2_commands("ov2 presets   # names\nls\n") == [["presets"]]
    assert ov2_commands("ssh x --command='\n  ov2 pretrain --seed 1 \\\n  --workers 2'\n") == [
        ["pretrain", "--seed", "1", "--workers", "2"]]


BASH_COMMANDS = [
    (block.line, args)
    for block in readme_blocks()
    if block.language in ("bash", "sh", "shell", "console")
    for args in ov2_commands(block.code)
]


def test_readme_has_ov2_commands():
    assert len(BASH_COMMANDS) >= 10


@pytest.mark.parametrize("line,args", BASH_COMMANDS,
                         ids=[f"L{line}-{' '.join(args[:1])}" for line, args in BASH_COMMANDS])
def test_ov2_command_parses(line, args, capsys):
    from keras_ov2.cli.main import build_parser

    try:
        parsed = build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"README.md:{line}: `ov2 {shlex.join(args)}` does not parse:\n"
                    f"{capsys.readouterr().err}")
    assert callable(parsed.run)
