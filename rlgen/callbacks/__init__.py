"""Callbacks for the trainers: progress bar, checkpoints (Orbax), W&B, profiler, JSONL log.

Importing this package imports neither wandb (an optional extra: `pip install
'rlgen[wandb]'`) nor Orbax (loaded on the first checkpoint).
"""

from rlgen.callbacks.base import Callback, CallbackList
from rlgen.callbacks.checkpoint import (
    CheckpointConfig,
    ModelCheckpoint,
    restore_checkpoint,
    save_checkpoint,
)
from rlgen.callbacks.jsonl import JSONLLogger
from rlgen.callbacks.profiler import JAXProfiler, ProfilingConfig
from rlgen.callbacks.progress import ProgressBarCallback
from rlgen.callbacks.wandb import WandbLoggerCallback, WandbLoggerConfig

__all__ = [
    "Callback",
    "CallbackList",
    "CheckpointConfig",
    "JAXProfiler",
    "JSONLLogger",
    "ModelCheckpoint",
    "ProfilingConfig",
    "ProgressBarCallback",
    "WandbLoggerCallback",
    "WandbLoggerConfig",
    "restore_checkpoint",
    "save_checkpoint",
]
