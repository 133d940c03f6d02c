"""A marker for the help text of the dataclasses the command line is built from."""

import tyro

DefaultInDoc = tyro.conf.arg(help_behavior_hint="")
"""An option whose ``None`` stands for a default its docstring states (``(default: 8192)``): tyro's
own ``(default: None)`` would follow it and contradict it."""
