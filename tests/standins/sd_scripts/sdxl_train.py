"""STAND-IN for kohya-ss sd-scripts' `sdxl_train.py`, used only by autotrain's tests.

No GPU, no weights: it trains nothing. See standin_trainer.py for what it imitates and its cues.
"""

import sys

from standin_trainer import main

if __name__ == "__main__":
    sys.exit(main("sdxl_train"))
