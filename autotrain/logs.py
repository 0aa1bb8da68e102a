"""Log files of a workspace: `logs/autotrain_pipeline.log` (everything) and
`logs/autotrain_errors.log` (errors only), shared by the CLI and every worker on the host."""

from __future__ import annotations

import logging
from pathlib import Path

from autotrain.workspace import Workspace, open_private_log

__all__ = ["setup_logging", "PIPELINE_LOG", "ERRORS_LOG"]

PIPELINE_LOG = "autotrain_pipeline.log"
ERRORS_LOG = "autotrain_errors.log"
_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def setup_logging(workspace: Path, level: int = logging.INFO) -> None:
    """Attach the two file handlers to the `autotrain` logger (once per process and workspace)."""
    logs_dir = Workspace(workspace).logs_dir
    logger = logging.getLogger("autotrain")
    target = str(logs_dir / PIPELINE_LOG)
    if any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
        return
    logs_dir.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(_FORMAT)
    for name, handler_level in ((PIPELINE_LOG, logging.DEBUG), (ERRORS_LOG, logging.ERROR)):
        open_private_log(logs_dir / name).close()  # 0600: job names, paths and errors
        handler = logging.FileHandler(logs_dir / name, encoding="utf-8")
        handler.setLevel(handler_level)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
