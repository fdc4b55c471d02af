import sys

from visionfit.cli import main

sys.exit(main())
