"""``python -m captum_feedback``: the ``captum-feedback`` command (:mod:`captum_feedback.app.cli`)."""

import sys

from captum_feedback.app.cli import main

sys.exit(main())
