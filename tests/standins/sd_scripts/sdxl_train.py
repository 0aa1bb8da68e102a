"""STAND-IN for kohya-ss sd-scripts' `sdxl_train.py`, used only by autotrain's tests.

No GPU, no weights: it trains nothing. See standin_trainer.py for what it imitates and its cues.
"""

import sys

from standin_parser import parser_for
from standin_trainer import main

# sdxl_train.py:189 (read by the dataset check): train_dataset_group.verify_bucket_reso_steps(32)


def setup_parser():  # sdxl_train.py:891
    return parser_for("sdxl_train")


if __name__ == "__main__":
    sys.exit(main("sdxl_train"))
