"""Pieces shared by the dataclasses the command line is built from: a help-text marker, option types."""

from typing import Literal

import tyro

Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""--precision of train and bench, the autocast dtype (:func:`memlab.train.trainer.autocast_dtype`)."""

DefaultInDoc = tyro.conf.arg(help_behavior_hint="")
"""An option whose ``None`` stands for a default its docstring states (``(default: 8192)``): tyro's
own ``(default: None)`` would follow it and contradict it."""
