"""``python -m caffe_tucker``: the command-line interface."""

import sys

from caffe_tucker.cli.main import main

sys.exit(main())
