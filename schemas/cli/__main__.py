"""``python -m schemas.cli``: the ``v1fabrik`` command line."""
import sys

from .main import main

sys.exit(main())
