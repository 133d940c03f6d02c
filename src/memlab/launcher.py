"""The ``memlab`` console script, and the two ways a command ends early: an error of the user's
(one line, exit code 2) and an interruption.  An interruption while the command line's modules load
(torch takes seconds) ends as one during a command does, in one line and exit code 130, not a
traceback.  (Light: no import of torch or of the command line before ``main`` runs.)"""

from __future__ import annotations

import signal
import sys


def fail(message: str) -> None:
    """The end of every user-facing error: one line on stderr, exit code 2."""
    print(f"memlab: error: {message}", file=sys.stderr)
    sys.exit(2)


def stop_interrupted(terminated: bool = False) -> None:
    """The end of a command cut off by Ctrl-C (exit code 130) or SIGTERM (143): one line on stderr."""
    print(f"memlab: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
    sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))


def main() -> None:
    try:
        from memlab.cli import main as run_command_line

        run_command_line()
    except KeyboardInterrupt:  # (the command's own interruptions are reported by the command line)
        stop_interrupted()
