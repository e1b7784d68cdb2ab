"""Turns the keras.io-style guides in this folder into Colab notebooks.

    python guides/make_notebooks.py          # (re)writes guides/NAME.ipynb for every guide
    python guides/make_notebooks.py --check  # exits 1 if a notebook is stale

A guide is a Python file that starts with the keras.io header docstring
(Title, Author, Date created, Last modified, Description, Accelerator); its
other module-level string statements are markdown cells, the code between
them code cells. Each notebook starts with a `pip install` cell for Colab.
No dependency beyond the standard library: the nbformat 4 JSON is written
here, the same bytes for the same guide.
"""

import argparse
import ast
import json
import sys
from pathlib import Path

GUIDES_DIR = Path(__file__).resolve().parent
REPOSITORY = "https://github.com/keras-ov2/keras_ov2"
HEADER_FIELDS = ("Title", "Author", "Date created", "Last modified", "Description",
                 "Accelerator")
# What a guide needs on Colab beyond keras_ov2 and what Colab ships.
EXTRA_PACKAGES = {"released_checkpoints": ["open_clip_torch", "safetensors"]}


def guide_paths():
    """Every guide: the .py files of this folder except this script."""
    return sorted(p for p in GUIDES_DIR.glob("*.py") if p.name != Path(__file__).name)


def parse_header(text, origin):
    """The header docstring -> {field: value}; every field is required."""
    fields = {}
    for line in text.strip().splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in HEADER_FIELDS:
            fields[name.strip()] = value.strip()
    missing = [f for f in HEADER_FIELDS if f not in fields]
    if missing:
        raise ValueError(f"{origin}: the header docstring lacks {', '.join(missing)}.")
    return fields


def split_cells(source, origin="guide"):
    """[(kind, text)] in order: "markdown" for module-level strings, "code"
    for the lines between them. The first string is the header."""
    lines = source.splitlines()
    tree = ast.parse(source, filename=str(origin))
    cells, line = [], 0  # `line`: first source line not yet in a cell (0-based)

    def add_code(end):
        code = "\n".join(lines[line:end]).strip("\n")
        if code.strip():
            cells.append(("code", code))

    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):
            add_code(node.lineno - 1)
            cells.append(("markdown", node.value.value.strip("\n")))
            line = node.end_lineno
    add_code(len(lines))
    if not cells or cells[0][0] != "markdown":
        raise ValueError(f"{origin}: a guide starts with its header docstring.")
    return cells


def header_markdown(fields):
    lines = [f"# {fields['Title']}", ""]
    for name in HEADER_FIELDS[1:]:
        lines.append(f"**{name}:** {fields[name]}<br>")
    lines[-1] = lines[-1].removesuffix("<br>")
    return "\n".join(lines)


def install_code(name):
    packages = [f"git+{REPOSITORY}.git"] + EXTRA_PACKAGES.get(name, [])
    return "\n".join([
        "# On Colab: install keras_ov2 (the other packages ship with Colab).",
        f"!pip install -q {' '.join(packages)}",
    ])


def cell(kind, text):
    source = text.splitlines(keepends=True)
    if kind == "markdown":
        return {"cell_type": "markdown", "metadata": {"colab_type": "text"}, "source": source}
    return {"cell_type": "code", "execution_count": None,
            "metadata": {"colab_type": "code"}, "outputs": [], "source": source}


def notebook(path):
    """The notebook of one guide, as a dict."""
    path = Path(path)
    parts = split_cells(path.read_text(), path)
    fields = parse_header(parts[0][1], path)
    cells = [cell("markdown", header_markdown(fields)), cell("code", install_code(path.stem))]
    cells += [cell(kind, text) for kind, text in parts[1:]]
    gpu = fields["Accelerator"].upper() in ("GPU", "TPU")
    return {
        "cells": cells,
        "metadata": {
            "accelerator": fields["Accelerator"].upper() if gpu else "None",
            "colab": {"name": path.stem, "provenance": [], "toc_visible": True},
            "kernelspec": {"display_name": "Python 3", "language": "python",
                           "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 0,
    }


def notebook_text(path):
    """The exact bytes (as str) the .ipynb of `path` must hold."""
    return json.dumps(notebook(path), indent=1, ensure_ascii=False) + "\n"


def stale_notebooks():
    """Guides whose committed .ipynb is missing or differs from the .py."""
    stale = []
    for path in guide_paths():
        target = path.with_suffix(".ipynb")
        if not target.exists() or target.read_text() != notebook_text(path):
            stale.append(target)
    return stale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook is missing or stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_notebooks()
        for target in stale:
            print(f"stale: {target} (run python guides/make_notebooks.py)")
        return 1 if stale else 0
    for path in guide_paths():
        target = path.with_suffix(".ipynb")
        target.write_text(notebook_text(path))
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
