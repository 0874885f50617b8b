"""``python -m caffe_tucker``: the command-line interface."""

import sys

from .cli import main

sys.exit(main())
