"""The ``memlab`` console script: an interruption while the command line's modules load (torch takes
seconds) ends as one during a command does, in one line and exit code 130, not a traceback."""

from __future__ import annotations

from memlab.errors import stop_interrupted


def main() -> None:
    try:
        from memlab.cli import main as run_command_line

        run_command_line()
    except KeyboardInterrupt:  # (the command's own interruptions are reported by the command line)
        stop_interrupted()
