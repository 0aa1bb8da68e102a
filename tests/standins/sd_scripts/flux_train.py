"""STAND-IN for kohya-ss sd-scripts' `flux_train.py`, used only by autotrain's tests.

No GPU, no weights: it trains nothing. See standin_trainer.py for what it imitates and its cues.
"""

import sys

from standin_parser import parser_for
from standin_trainer import main

# flux_train.py:151 (read by the dataset check): train_dataset_group.verify_bucket_reso_steps(16)


def setup_parser():  # flux_train.py:785
    return parser_for("flux_train")


if __name__ == "__main__":
    sys.exit(main("flux_train"))
