"""The ten algorithmic generators, checked by independent computation, and their IID/OOD grids."""

from __future__ import annotations

import random
import re

import pytest

from memlab.data.tasks import GRID_VERSION, GRIDS, TASKS, get_task
from memlab.errors import MemlabError

NAMES = ["mod_add", "parity", "addition", "multiplication", "copy", "reverse", "dyck", "chain", "compare", "successor"]
PAIRS = {")": "(", "]": "[", "}": "{"}


def balanced(s: str) -> bool:
    stack = []
    for c in s:
        if c in "([{":
            stack.append(c)
        elif not stack or stack.pop() != PAIRS[c]:
            return False
    return not stack


def open_brackets(prefix: str) -> int | None:
    """Unclosed brackets of a valid prefix; None if the prefix already mismatches."""
    stack = []
    for c in prefix:
        if c in "([{":
            stack.append(c)
        elif not stack or stack.pop() != PAIRS[c]:
            return None
    return len(stack)


def check(task: str, d: int, prompt: str, answer: str) -> None:
    """Recompute the answer from the prompt with Python's own arithmetic / a stack."""
    if task == "mod_add":
        terms, m = re.fullmatch(r"\(([\d+]+)\)%(\d+)", prompt).groups()
        xs = [int(t) for t in terms.split("+")]
        assert len(xs) == d and all(0 <= x < int(m) for x in xs) and int(answer) == sum(xs) % int(m)
    elif task == "parity":
        bits = prompt.removeprefix("parity: ")
        assert len(bits) == d and set(bits) <= {"0", "1"} and answer == str(bin(int(bits, 2)).count("1") % 2)
    elif task in ("addition", "multiplication"):
        a, b = re.fullmatch(r"(\d+)[+*](\d+)", prompt).groups()
        assert len(a) == len(b) == d
        assert int(answer) == (int(a) + int(b) if task == "addition" else int(a) * int(b))
    elif task == "copy":
        body = prompt.removeprefix("copy: ")
        assert len(body) == d and answer == body
    elif task == "reverse":
        body = prompt.removeprefix("reverse: ")
        assert len(body) == d and answer == "".join(reversed(body))
    elif task == "dyck" and prompt.startswith("balanced: "):
        s = prompt.removeprefix("balanced: ")
        assert len(s) == 2 * d and answer == ("yes" if balanced(s) else "no")
    elif task == "dyck":
        prefix = prompt.removeprefix("complete: ")
        n_open = open_brackets(prefix)
        assert n_open and set(answer) <= set(PAIRS) and len(answer) == n_open  # shortest completion
        assert balanced(prefix + answer) and len(prefix) < 2 * d
    elif task == "chain":
        assert set(prompt) <= set("0123456789+-") and len(re.findall(r"[+-]", prompt)) == d
        assert int(answer) == eval(prompt, {"__builtins__": {}})
    elif task == "compare":
        a, b = map(int, prompt.removeprefix("compare: ").split())
        assert len(str(a)) == len(str(b)) == d and answer == ("<" if a < b else ">" if a > b else "=")
    elif task == "successor":
        n = prompt.removeprefix("succ: ")
        assert len(n) == d and int(answer) == int(n) + 1
    else:
        raise AssertionError(task)


def test_the_ten_tasks_are_registered():
    assert sorted(TASKS) == sorted(NAMES) == sorted(GRIDS)
    assert isinstance(GRID_VERSION, str) and GRID_VERSION


@pytest.mark.parametrize("task", NAMES)
def test_answers_are_correct_at_every_grid_difficulty(task):
    rng = random.Random(task)
    grid = GRIDS[task]
    answers = set()
    for d in sorted({*grid.train, *grid.iid, *grid.ood}):
        for _ in range(25):
            ex = TASKS[task](rng, d)
            check(task, d, ex.prompt, ex.answer)
            assert ex.meta["task"] == task and ex.meta["difficulty"] == d
            answers.add(ex.answer)
    assert len(answers) > 1  # not a constant answer


def test_labels_are_not_degenerate():
    rng = random.Random(0)
    parity = {TASKS["parity"](rng, 8).answer for _ in range(50)}
    compare = {TASKS["compare"](rng, 3).answer for _ in range(100)}
    dyck = [TASKS["dyck"](rng, 6) for _ in range(200)]
    assert parity == {"0", "1"} and compare == {"<", ">", "="}
    assert {e.answer for e in dyck if e.prompt.startswith("balanced")} == {"yes", "no"}
    assert any(e.prompt.startswith("complete") for e in dyck)
    carries = [TASKS["successor"](rng, 4) for _ in range(100)]
    assert sum(e.answer.endswith("0") for e in carries) > 30  # trailing nines are common


@pytest.mark.parametrize("task", NAMES)
def test_ood_is_longer_than_anything_trained(task):
    grid = GRIDS[task]
    assert max(grid.train) == max(grid.iid) < min(grid.ood)
    assert list(grid.train) == sorted(grid.train) and set(grid.iid) <= set(grid.train)
    rng = random.Random(1)

    def mean_length(d: int) -> float:
        return sum(len(TASKS[task](rng, d).prompt) for _ in range(50)) / 50

    assert mean_length(min(grid.ood)) > mean_length(max(grid.iid))
    assert mean_length(max(grid.ood)) > 1.5 * mean_length(max(grid.iid))


@pytest.mark.parametrize("task", NAMES)
def test_no_ood_example_is_one_the_training_grid_draws(task):
    """Dyck completions had cut a long string short: 13% of OOD examples at 12 pairs were training examples."""
    rng, grid = random.Random(0), GRIDS[task]
    trained = {(e.prompt, e.answer) for d in grid.train for e in (TASKS[task](rng, d) for _ in range(1500))}
    ood = [TASKS[task](rng, d) for d in grid.ood for _ in range(300)]
    assert not [e for e in ood if (e.prompt, e.answer) in trained]


def test_unbalanced_dyck_strings_cannot_be_told_by_counting():
    """A corruption had changed the counts of openers and closers in ~80% of the "no" items (audit)."""
    rng = random.Random(4)
    checks = [e for e in (TASKS["dyck"](rng, d) for d in (2, 6, 12) for _ in range(300)) if e.prompt.startswith("bal")]
    unbalanced = [e.prompt.removeprefix("balanced: ") for e in checks if e.answer == "no"]
    assert len(unbalanced) > 100
    assert all(sum(c in "([{" for c in s) == sum(c in ")]}" for c in s) for s in unbalanced)


def test_successor_has_no_fixed_example():
    """With k = d nines, one all-nines number had made up ~0.5 / d of every cell (56% at d = 1) (audit)."""
    rng = random.Random(5)
    for d, before in ((1, 0.55), (2, 0.255), (4, 0.13)):
        prompts = [TASKS["successor"](rng, d).prompt for _ in range(1000)]
        assert prompts.count(f"succ: {'9' * d}") / 1000 < before / 2


def test_dyck_completions_hold_all_their_openers():
    rng = random.Random(3)
    for difficulty in (1, 5, 12):
        for e in (TASKS["dyck"](rng, difficulty) for _ in range(200)):
            if e.prompt.startswith("complete: "):
                prefix = e.prompt.removeprefix("complete: ")
                assert sum(c in "([{" for c in prefix) == difficulty and 1 <= len(e.answer) <= difficulty


def test_parity_and_addition_grids_match_the_published_setting():
    assert max(GRIDS["parity"].iid) == 8 and max(GRIDS["parity"].ood) == 64
    assert max(GRIDS["addition"].iid) == 4 and max(GRIDS["addition"].ood) == 8


def test_generators_are_deterministic_under_a_seed():
    for task in NAMES:
        a = [TASKS[task](random.Random(7), 5) for _ in range(3)]
        b = [TASKS[task](random.Random(7), 5) for _ in range(3)]
        assert a == b


@pytest.mark.parametrize("task", NAMES)
def test_impossible_difficulty_is_an_error(task):
    with pytest.raises(MemlabError, match=f"task {task} needs difficulty"):
        TASKS[task](random.Random(0), 0)


def test_get_task_errors():
    assert get_task("parity") is TASKS["parity"]
    with pytest.raises(MemlabError, match="unknown task 'parity2'; valid choices: addition"):
        get_task("parity2")
    with pytest.raises(MemlabError, match="takes no parameters"):
        get_task("parity:bits=3")
