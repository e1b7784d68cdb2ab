"""`ov2 presets`: the shipped presets, their sources and cached weights."""

import json


def add_presets_parser(commands):
    p = commands.add_parser("presets", help="list the presets, their sources and cached weights")
    p.set_defaults(run=run_presets)


def cache_state(name, metadata):
    """How a released preset's weights stand in the conversion cache."""
    from keras_ov2.models import presets

    if not metadata.get("source"):
        return "config only (pretrain from it)"
    folder = presets.converted_folder(metadata["source"])
    if not presets.has_weights(folder):
        return "not converted yet"
    saved = json.loads((folder / "metadata.json").read_text())
    revision = saved.get("source_revision")
    return f"cached ({saved['converted_by']}" + (f", revision {revision[:10]})" if revision else ")")


def run_presets(args):
    from keras_ov2.models import presets

    rows = [("name", "params", "image", "source", "weights")]
    for name, metadata in presets.list_presets().items():
        rows.append((
            name, f"{metadata['params'] / 1e6:.1f}M", f"{metadata.get('image_size', '-')} px",
            (metadata.get("source") or "-").removeprefix("hf://"), cache_state(name, metadata),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
