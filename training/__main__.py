"""``python -m pano360_training`` / ``accelerate launch -m pano360_training``: the same as ``pano360-train``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
