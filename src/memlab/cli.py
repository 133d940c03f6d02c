"""The ``memlab`` command line: one dataclass of options per command, parsed by tyro.

Flags accept hyphens or underscores (``--model-size`` / ``--model_size``).  Errors a user
can cause end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tyro

from memlab.errors import MemlabError

# ------------------------------------------------------------------------ info


@dataclass
class InfoArgs:
    """Parameter counts, layer pattern, FLOPs and per-sequence state bytes of a variant at a size."""

    variant: str = "baseline"
    model_size: str = "tiny"
    context_len: int = 2048
    """context length at which the recurrent state is measured"""
    all: bool = False
    """every registered variant (at --model-size), as a markdown table"""


def run_info(args: InfoArgs) -> None:
    from memlab.analysis.info import describe, markdown_table
    from memlab.config import list_variants

    if args.all:
        rows = [describe(v, args.model_size, args.context_len) for v in list_variants()]
        print(markdown_table(rows))
        return
    for key, value in describe(args.variant, args.model_size, args.context_len).items():
        print(f"{key:>22}: {value}")


# -------------------------------------------------------------------- generate


@dataclass
class GenerateArgs:
    """Generate a continuation of a prompt from a checkpoint (or a fresh model with --init)."""

    prompt: str
    checkpoint: str | None = None
    init: bool = False
    """use a freshly initialised model (with --variant/--model-size and the byte tokenizer)"""
    variant: str = "baseline"
    model_size: str = "tiny"
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    seed: int = 0


def run_generate(args: GenerateArgs) -> None:
    import torch

    import memlab
    from memlab.data.tokenizer import build_tokenizer, load_tokenizer
    from memlab.models.paths import resolve_model_dir

    torch.manual_seed(args.seed)
    if args.init == (args.checkpoint is not None):
        raise MemlabError("give exactly one of --checkpoint DIR or --init")
    if args.init:
        tokenizer = build_tokenizer("byte")
        model = memlab.build_model(args.variant, args.model_size, vocab_size=tokenizer.vocab_size)
    else:
        model_dir = resolve_model_dir(args.checkpoint)
        model, tokenizer = memlab.load(model_dir), load_tokenizer(model_dir)
    ids = torch.tensor([tokenizer.encode(args.prompt)])
    if ids.shape[1] == 0:
        raise MemlabError("the prompt is empty")
    out = model.eval().generate(
        ids, args.max_new_tokens, args.temperature, args.top_k, tokenizer.eos_id,
        torch.Generator().manual_seed(args.seed),
    )
    print(args.prompt + tokenizer.decode(out[0, ids.shape[1] :].tolist()))


# ---------------------------------------------------------------------- main

COMMANDS: dict[str, tuple[type, Callable[[Any], None]]] = {
    "info": (InfoArgs, run_info),
    "generate": (GenerateArgs, run_generate),
}


def _one_line(tyro_message: str) -> str:
    """The first content line of tyro's boxed error message."""
    for line in tyro_message.splitlines():
        text = line.strip().strip("│").strip()
        if text and not text.startswith(("╭", "╰", "─")):
            return text
    return "invalid arguments"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = sorted(COMMANDS)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: memlab {" + ",".join(n.replace(" ", "-") for n in names) + "} [--help]")
        print("\n".join(f"  {n:<14} {(COMMANDS[n][0].__doc__ or '').strip()}" for n in names))
        sys.exit(0 if argv else 2)
    command = argv[0]
    if len(argv) > 1 and f"{argv[0]} {argv[1]}" in COMMANDS:  # two-word commands: memlab data prepare
        command, argv = f"{argv[0]} {argv[1]}", argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; valid choices: {', '.join(names)}")
    args_type, run = COMMANDS[command]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = tyro.cli(args_type, args=argv[1:], prog=f"memlab {command}")
    except SystemExit as e:
        if e.code not in (0, None):
            _fail(f"{_one_line(stderr.getvalue())} (see memlab {command} --help)")
        raise
    try:
        run(args)
    except MemlabError as e:
        _fail(str(e))


def _fail(message: str) -> None:
    print(f"memlab: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
