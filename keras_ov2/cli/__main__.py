"""`python -m keras_ov2.cli ...`, the same as `ov2 ...`."""

import sys

from keras_ov2.cli.main import main

sys.exit(main())
