"""The `ov2` command line: one module per command, helpers in `common`.

Nothing here imports Keras before `main` has chosen the backend, so
`ov2 --help` loads no backend and `--backend` needs no restart.
"""

from keras_ov2.cli.main import main
