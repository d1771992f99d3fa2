import sys

from .run.signals import RECORDER

RECORDER.install()  # first: a signal while the rest is imported and the plan is made is recorded (R10)

from .cli import main  # noqa: E402

sys.exit(main())
