"""``python -m trlrec``: the ``trlrec`` command."""

import sys

from trlrec.cli import main

sys.exit(main())
