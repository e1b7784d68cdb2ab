"""Writes keras_ov2/presets from the tables (keras_ov2.preset_table).

    python presets/generate.py          # rewrite every preset folder
    python presets/generate.py --check  # list what differs; exit 1 if anything

The logic is `keras_ov2.preset_generation`; this is its command line.
"""

import argparse
import sys
import tempfile
from pathlib import Path

# The checkout's package, even where another keras_ov2 is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keras_ov2 import preset_generation  # noqa: E402


def check():
    """Exit status 1, listing the differences, unless the folders are as generated."""
    with tempfile.TemporaryDirectory() as folder:
        preset_generation.write_presets(folder)
        found = preset_generation.differences(folder, preset_generation.PRESETS_DIR)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} difference(s) in {preset_generation.PRESETS_DIR}; "
              "run python presets/generate.py to rewrite the folders.")
    return 1 if found else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare the folders with what the tables generate")
    if parser.parse_args().check:
        return check()
    preset_generation.write_presets()
    print(f"Wrote {len(preset_generation.PRESETS)} presets to {preset_generation.PRESETS_DIR}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
