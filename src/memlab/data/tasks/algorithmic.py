"""The ten algorithmic tasks and their IID / OOD difficulty grids.

Each task is ``(rng: random.Random, difficulty: int) -> Example``; ``difficulty`` is the length
or size knob (digits, bits, symbols, bracket pairs, operations, operands).  Formats::

    mod_add         (12+45+80)%97         -> 40         difficulty = operands (>= 2)
    parity          parity: 10110         -> 1          bits
    addition        4821+907              -> 5728       digits per operand
    multiplication  48*27                 -> 1296       digits per operand
    copy            copy: 38201           -> 38201      digits
    reverse         reverse: 38201        -> 10283      digits
    dyck            balanced: ([)]        -> no         bracket pairs; half the time instead
                    complete: ([{}        -> ])         (the shortest closing sequence)
    chain           7+3-2+4-9             -> 3          operations on single digits
    compare         compare: 4821 4830    -> <          digits
    successor       succ: 1299            -> 1300       digits (trailing nines are common)

``GRIDS[task]`` gives the difficulties trained on (``train``: every level up to the largest IID
one), evaluated in distribution (``iid``) and out of distribution (``ood``: all longer than any
trained level).  ``GRID_VERSION`` names this grid in every result file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from memlab.data.tasks.base import Example, check_difficulty

GRID_VERSION = "memlab-alg-grid-v3"  # v2: dyck completions hold all their openers; v3: the shortcuts below gone
DIGITS = "0123456789"
BRACKETS = {"(": ")", "[": "]", "{": "}"}


def _number(rng: random.Random, digits: int) -> int:
    """A uniform number with exactly ``digits`` digits (0..9 for one digit)."""
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _digit_string(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(DIGITS) for _ in range(length))


def _meta(task: str, difficulty: int, **extra) -> dict:
    return {"task": task, "difficulty": difficulty, **extra}


def mod_add(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("mod_add", difficulty, 2)
    modulus = rng.randint(2, 99)
    terms = [rng.randrange(modulus) for _ in range(difficulty)]
    prompt = f"({'+'.join(map(str, terms))})%{modulus}"
    return Example(prompt, str(sum(terms) % modulus), meta=_meta("mod_add", difficulty))


def parity(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("parity", difficulty, 1)
    bits = "".join(rng.choice("01") for _ in range(difficulty))
    return Example(f"parity: {bits}", str(bits.count("1") % 2), meta=_meta("parity", difficulty))


def addition(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("addition", difficulty, 1)
    a, b = _number(rng, difficulty), _number(rng, difficulty)
    return Example(f"{a}+{b}", str(a + b), meta=_meta("addition", difficulty))


def multiplication(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("multiplication", difficulty, 1)
    a, b = _number(rng, difficulty), _number(rng, difficulty)
    return Example(f"{a}*{b}", str(a * b), meta=_meta("multiplication", difficulty))


def copy(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("copy", difficulty, 1)
    s = _digit_string(rng, difficulty)
    return Example(f"copy: {s}", s, meta=_meta("copy", difficulty))


def reverse(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("reverse", difficulty, 1)
    s = _digit_string(rng, difficulty)
    return Example(f"reverse: {s}", s[::-1], meta=_meta("reverse", difficulty))


def _balanced(rng: random.Random, pairs: int) -> str:
    """A uniformly-walked balanced bracket string with ``pairs`` pairs of mixed types."""
    out, stack, to_open = [], [], pairs
    while to_open or stack:
        if to_open and (not stack or rng.random() < 0.5):
            opener = rng.choice(list(BRACKETS))
            stack.append(opener)
            out.append(opener)
            to_open -= 1
        else:
            out.append(BRACKETS[stack.pop()])
    return "".join(out)


def dyck(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("dyck", difficulty, 1)
    s = _balanced(rng, difficulty)
    if rng.random() < 0.5:  # is it balanced?  A bracket of another type (an opener for an opener, a closer
        corrupt = rng.random() < 0.5  # for a closer) unbalances it and keeps the counts: counting cannot tell
        if corrupt:
            i = rng.randrange(len(s))
            same_role = BRACKETS.keys() if s[i] in BRACKETS else BRACKETS.values()
            s = s[:i] + rng.choice([c for c in same_role if c != s[i]]) + s[i + 1 :]
        return Example(f"balanced: {s}", "no" if corrupt else "yes", meta=_meta("dyck", difficulty, mode="check"))
    # complete it: cut after the last opener, where brackets are still open, and answer the closers;
    # the prompt holds all `difficulty` openers, so a longer string is a longer prompt
    last_opener = max(i for i, c in enumerate(s) if c in BRACKETS)
    depth = sum(1 if c in BRACKETS else -1 for c in s[: last_opener + 1])
    prefix = s[: last_opener + 1 + rng.randrange(depth)]  # 0 .. depth - 1 of the closers that follow
    stack: list[str] = []
    for c in prefix:
        if c in BRACKETS:
            stack.append(c)
        else:
            stack.pop()
    closers = "".join(BRACKETS[c] for c in reversed(stack))
    return Example(f"complete: {prefix}", closers, meta=_meta("dyck", difficulty, mode="complete"))


def chain(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("chain", difficulty, 1)
    value = rng.randint(0, 9)
    prompt = str(value)
    for _ in range(difficulty):
        op, x = rng.choice("+-"), rng.randint(0, 9)
        value = value + x if op == "+" else value - x
        prompt += f"{op}{x}"
    return Example(prompt, str(value), meta=_meta("chain", difficulty))


def compare(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("compare", difficulty, 1)
    a = _number(rng, difficulty)
    u = rng.random()
    if u < 0.25:
        b = a
    elif u < 0.5:
        b = _number(rng, difficulty)
    else:  # differ in one digit: the comparison hinges on a single position
        digits = list(str(a))
        i = rng.randrange(len(digits))
        choices = [d for d in DIGITS if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)]
        digits[i] = rng.choice(choices)
        b = int("".join(digits))
    answer = "<" if a < b else ">" if a > b else "="
    return Example(f"compare: {a} {b}", answer, meta=_meta("compare", difficulty))


def successor(rng: random.Random, difficulty: int) -> Example:
    check_difficulty("successor", difficulty, 1)
    n = _number(rng, difficulty)
    if difficulty > 1 and rng.random() < 0.5:  # end in k nines: the carry chain is the point (all nines,
        k = rng.randint(1, difficulty - 1)  # one fixed number, only as often as chance draws it)
        n = n - n % 10**k + 10**k - 1
    return Example(f"succ: {n}", str(n + 1), meta=_meta("successor", difficulty))


ALGORITHMIC_TASKS = {
    f.__name__: f for f in (mod_add, parity, addition, multiplication, copy, reverse, dyck, chain, compare, successor)
}


@dataclass(frozen=True)
class Grid:
    """Difficulties to train on, to evaluate in distribution and out of distribution."""

    train: tuple[int, ...]
    iid: tuple[int, ...]
    ood: tuple[int, ...]


def _grid(lowest: int, iid: tuple[int, ...], ood: tuple[int, ...]) -> Grid:
    return Grid(tuple(range(lowest, max(iid) + 1)), iid, ood)


GRIDS: dict[str, Grid] = {
    "mod_add": _grid(2, (2, 3, 4), (6, 8, 12)),
    "parity": _grid(1, (2, 4, 8), (16, 32, 64)),
    "addition": _grid(1, (1, 2, 3, 4), (5, 6, 7, 8)),
    "multiplication": _grid(1, (1, 2, 3), (4, 5, 6)),
    "copy": _grid(1, (4, 8, 16), (32, 48, 64)),
    "reverse": _grid(1, (4, 8, 16), (32, 48, 64)),
    "dyck": _grid(1, (2, 4, 8), (12, 16, 32)),
    "chain": _grid(1, (2, 4, 8), (16, 24, 32)),
    "compare": _grid(1, (1, 2, 4), (8, 12, 16)),
    "successor": _grid(1, (1, 2, 4), (8, 12, 16)),
}
