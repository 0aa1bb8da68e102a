"""STAND-IN for kohya-ss sd-scripts' `flux_train_network.py`, used only by autotrain's tests.

No GPU, no weights: it trains nothing. See standin_trainer.py for what it imitates and its cues.
"""

import sys

from standin_trainer import main

if __name__ == "__main__":
    sys.exit(main("flux_train_network"))
