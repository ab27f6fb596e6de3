"""``python -m b4m.cli`` (and ``accelerate launch -m b4m.cli``): the ``b4m`` command."""

import sys

from b4m.cli import main

sys.exit(main())
