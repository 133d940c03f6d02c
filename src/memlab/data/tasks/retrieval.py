"""Retrieval tasks: fact + distractors NIAH, RULER-style single-needle NIAH, Zoology-style MQAR.

Each is a small frozen dataclass of parameters whose instances are tasks
``(rng, difficulty) -> Example | TokenizedExample``:

- :class:`FactNIAH` (``niah``): "Alice has a red ball." among ``difficulty`` distractor facts
  about the same object in the same template, each of another person ("Dave has a green
  ball."); query "What color is Alice's ball?" -> "red".  Only the name tells the
  fact from the distractors (a fixed distractor sentence had let "the colour after 'has a'"
  answer).  The names of one example are distinct while there are enough (``len(NAMES) - 1``
  distractors), then the distractors' names repeat; the asked name is never repeated.
  ``position``: start, middle, end or random; ``meta`` records the fact's sentence index, its
  depth (0..1) and bucket (early/middle/late).  The distractor curriculum of the source
  experiments is ``NIAH_LEVELS`` = 0, 10, 30, 50, 100.  ``distractors=sky`` gives the source
  experiments' own task (``SKY``, "The sky is blue.", repeated), to reproduce their numbers: the
  fact is the only sentence of its form, so the colour after "has a" answers it (a state must still
  carry that colour to the question, but need not bind it to the name).

- :class:`SNIAH` (``sniah1/2/3``, as in RULER): "One of the special magic numbers for
  ambitious-kettle is: 4827151." hidden in a haystack of ``difficulty`` tokens at the sentence
  boundary nearest ``depth`` percent of its tokens (``meta["depth"]``: where it is, a coarse
  place when a few long prose sentences fill a short haystack).  Variant 1: a 7-digit number in
  repeated noise; 2: a number in real prose; 3: a UUID in prose.  ``n_keys`` > 1 adds needles
  with other keys (multi-key), ``n_values`` > 1 gives the key several values (multi-value: all are
  answered, in text order), ``n_queries`` > 1 asks for several keys (multi-query: answered in
  query order).  Token counts use ``count_tokens`` (default: UTF-8 bytes, i.e. the byte
  tokenizer; pass the run's tokenizer for exact lengths).
- :class:`MQAR` (``mqar``, as in Zoology): ``difficulty`` key-value pairs of token ids, then
  queries of the keys at power-law distributed gaps, each followed by its value, in sequences of
  ``seq_len`` tokens.  Token-level: it returns a :class:`TokenizedExample` whose ids lie in
  ``[0, vocab_size)`` outside ``reserved_ids`` (a tokenizer's special tokens); every value after a
  query is scored.

Every example's ``meta["chance"]`` is the probability that a uniform guess among the answer's
candidate values is exactly right: 1/8 for the fact NIAH (8 colours), 1/9e6 per 7-digit number
and 2^-122 per UUID for S-NIAH, 1/n! for MQAR's n values (each query given one of the context's
values, each value once).
``RETRIEVAL_VERSION`` names these tasks in every longctx and ablation result (v2: the fact NIAH's
distractors are other people's facts, and an eval cell's examples are distinct).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from memlab.data.tasks.base import Example, TokenizedExample, check_difficulty
from memlab.errors import MemlabError

NAMES = (
    "Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Henry", "Abe", "Ada", "Alan", "Alex", "Amy", "Ann",
    "Ava", "Bea", "Ben", "Beth", "Bill", "Brad", "Cara", "Carl", "Cole", "Dan", "Dean", "Dora", "Drew", "Eli",
    "Ella", "Emma", "Eric", "Eva", "Finn", "Fay", "Fred", "Gabe", "Gail", "Gene", "Gia", "Glen", "Gus", "Hal",
    "Hank", "Hugh", "Ian", "Ida", "Ike", "Ines", "Ira", "Ivan", "Ivy", "Jack", "Jade", "Jake", "Jane", "Jay",
    "Jean", "Jill", "Joe", "Joel", "John", "Jon", "Josh", "Kai", "Kate", "Kim", "Kurt", "Kyle", "Lara", "Leah",
    "Lee", "Leo", "Lily", "Lisa", "Liz", "Luke", "Lulu", "Mae", "Mary", "Max", "Meg", "Mia", "Mike", "Milo",
    "Nate", "Neil", "Nell", "Nick", "Nina", "Noah", "Nora", "Olga", "Omar", "Otto", "Owen", "Pam", "Paul", "Pete",
    "Quin", "Ray", "Reed", "Rex", "Rita", "Rob", "Rose", "Roy", "Ruby", "Ruth", "Sam", "Sara", "Seth", "Sue",
    "Tara", "Ted", "Tess", "Tim", "Toby", "Tom", "Troy", "Uma", "Vera", "Vic", "Wade", "Walt", "Zack", "Zoe",
)  # fmt: skip  (128 people: the names of an example are distinct up to 127 distractors)
OBJECTS = ("ball", "car", "hat", "book", "pen", "cup", "ring", "lamp")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "white")
NIAH_LEVELS = (0, 10, 30, 50, 100)
RETRIEVAL_VERSION = "memlab-retrieval-v2"  # v1: one fixed distractor sentence, cells could repeat examples
SKY = "The sky is blue."  # the source experiments' distractor sentence (niah:distractors=sky)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_ADJECTIVES = (
    "ambitious", "bitter", "brave", "calm", "clever", "curious", "eager", "fancy", "gentle", "grumpy",
    "hollow", "jolly", "lazy", "lively", "mighty", "nervous", "polite", "quiet", "rapid", "shiny",
)  # fmt: skip
KEY_NOUNS = (
    "anchor", "badger", "canyon", "dolphin", "ember", "falcon", "garden", "harbor", "island", "jacket",
    "kettle", "lantern", "meadow", "needle", "orchard", "pebble", "quarry", "river", "saddle", "tunnel",
)  # fmt: skip
SNIAH_LEVELS = (256, 512, 1024, 2048, 4096)


def _bucket(depth: float) -> str:
    return "early" if depth < 1 / 3 else "middle" if depth < 2 / 3 else "late"


def fact(name: str, color: str, obj: str) -> str:
    """The fact NIAH's sentence template, of the needle and of every distractor."""
    return f"{name} has a {color} {obj}."


@dataclass(frozen=True)
class FactNIAH:
    """A fact among ``difficulty`` distractor facts of other people; the question asks for its colour."""

    position: Literal["start", "middle", "end", "random"] = "random"
    depth: float | None = None  # percent (0..100) of the distractors before the fact; overrides position
    distractors: Literal["people", "sky"] = "people"  # facts of other people, or the source's SKY sentence

    def __post_init__(self) -> None:
        if self.position not in ("start", "middle", "end", "random"):
            raise MemlabError(f"unknown niah position {self.position!r}; valid choices: start, middle, end, random")
        if self.distractors not in ("people", "sky"):
            raise MemlabError(f"unknown niah distractors {self.distractors!r}; valid choices: people, sky")
        if self.depth is not None and not 0 <= self.depth <= 100:
            raise MemlabError(f"niah depth must be a percentage in [0, 100], got {self.depth}")

    def __call__(self, rng: random.Random, difficulty: int) -> Example:
        check_difficulty("niah", difficulty, 0)
        obj = rng.choice(OBJECTS)
        if self.distractors == "sky":
            name, color = rng.choice(NAMES), rng.choice(COLORS)
            sentences = [SKY] * difficulty
        else:
            name, *others = rng.sample(NAMES, min(difficulty + 1, len(NAMES)))  # the asked name is never repeated
            while len(others) < difficulty:  # more distractors than names: theirs repeat
                others += rng.sample(others, min(len(others), difficulty - len(others)))
            color, *colors = (rng.choice(COLORS) for _ in range(difficulty + 1))
            sentences = [fact(other, c, obj) for other, c in zip(others, colors)]
        index = {"start": 0, "middle": difficulty // 2, "end": difficulty}.get(self.position)
        if self.depth is not None:
            index = round(difficulty * self.depth / 100)
        elif index is None:
            index = rng.randint(0, difficulty)
        sentences.insert(index, fact(name, color, obj))
        depth = index / difficulty if difficulty else 0.0
        meta = {"task": "niah", "difficulty": difficulty, "index": index, "depth": depth, "bucket": _bucket(depth),
                "chance": 1 / len(COLORS)}
        return Example(" ".join(sentences), color, query=f"What color is {name}'s {obj}?", meta=meta)

    def distractor_sentences(self) -> list[str]:
        """The distractor sentences this task draws from (people's: every name with each colour-object
        pair of one index, enough to span their lengths)."""
        if self.distractors == "sky":
            return [SKY]
        return [fact(name, color, obj) for name in NAMES for color, obj in zip(COLORS, OBJECTS)]


def _sentences(text: str) -> list[str]:
    flat = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat) if len(s.strip()) > 1]


@functools.lru_cache(maxsize=1)
def default_prose() -> tuple[str, ...]:
    """Sentences of English prose from the standard library's help topics (no download)."""
    from memlab.data.sources import pydoc_topics

    return tuple(s for topic in pydoc_topics() for s in _sentences(topic) if 20 <= len(s) <= 400)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _nearest(offsets: list[int], target: float) -> int:
    """The index of the (sorted) offset nearest ``target``; of two equally near, the later (round half up)."""
    k = bisect.bisect_left(offsets, target)  # offsets[k - 1] < target <= offsets[k]
    if k == len(offsets) or (k > 0 and target - offsets[k - 1] < offsets[k] - target):
        return k - 1
    return k


@dataclass(frozen=True)
class SNIAH:
    """RULER single-needle NIAH; ``difficulty`` is the context length in tokens."""

    variant: Literal[1, 2, 3] = 1
    depth: float | None = None  # percent (0..100) of the haystack before the queried needle; None: random
    n_keys: int = 1  # needles with distinct keys (> n_queries: the rest are distractors)
    n_values: int = 1  # values per queried key
    n_queries: int = 1  # keys asked for
    haystack: Sequence[str] | None = None  # prose sentences for variants 2 and 3; default: default_prose()
    count_tokens: Callable[[str], int] = _utf8_len

    def __post_init__(self) -> None:
        if self.variant not in (1, 2, 3):
            raise MemlabError(f"unknown S-NIAH variant {self.variant!r}; valid choices: 1, 2, 3")
        if self.depth is not None and not 0 <= self.depth <= 100:
            raise MemlabError(f"S-NIAH depth must be a percentage in [0, 100], got {self.depth}")
        if min(self.n_keys, self.n_values, self.n_queries) < 1 or self.n_queries > self.n_keys:
            raise MemlabError(
                f"S-NIAH needs 1 <= n_queries <= n_keys and n_values >= 1, got n_keys={self.n_keys}, "
                f"n_values={self.n_values}, n_queries={self.n_queries}"
            )
        if self.n_keys > len(KEY_ADJECTIVES) * len(KEY_NOUNS):
            raise MemlabError(f"S-NIAH supports at most {len(KEY_ADJECTIVES) * len(KEY_NOUNS)} keys")

    @property
    def kind(self) -> str:
        return "UUIDs" if self.variant == 3 else "numbers"

    def _value(self, rng: random.Random) -> str:
        if self.variant == 3:
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return str(rng.randint(1_000_000, 9_999_999))

    def __call__(self, rng: random.Random, difficulty: int) -> Example:
        keys = [f"{a}-{n}" for a, n in rng.sample([(a, n) for a in KEY_ADJECTIVES for n in KEY_NOUNS], self.n_keys)]
        queried = keys[: self.n_queries]
        values = {k: [self._value(rng) for _ in range(self.n_values if k in queried else 1)] for k in keys}
        needles = [(k, v) for k in keys for v in values[k]]  # the queried key's first value comes first
        intro = (
            f"Some special magic {self.kind} are hidden within the following text. Make sure to memorize "
            f"them. I will quiz you about the {self.kind} afterwards."
        )
        query = f"What are all the special magic {self.kind} for {', '.join(queried)} mentioned in the provided text?"
        needle_text = [f"One of the special magic {self.kind} for {k} is: {v}." for k, v in needles]
        fixed = self.count_tokens(" ".join([intro, query, *needle_text]))
        budget = difficulty - fixed
        if budget < 0:
            raise MemlabError(
                f"S-NIAH context of {difficulty} tokens is too short for its {len(needles)} needle(s) "
                f"and question ({fixed} tokens)"
            )
        hay = self._haystack(rng, budget)
        # the first needle at `depth` of the haystack's tokens (offsets: tokens before each sentence boundary),
        # the others at random boundaries; inserting from the back keeps indices valid
        offsets = list(itertools.accumulate((self.count_tokens(" " + s) for s in hay), initial=0))
        n_hay = len(hay)
        first = _nearest(offsets, offsets[-1] * self.depth / 100) if self.depth is not None else rng.randint(0, n_hay)
        places = [(first, rng.random())] + [(rng.randint(0, n_hay), rng.random()) for _ in needle_text[1:]]
        order = sorted(range(len(needles)), key=places.__getitem__)  # needles at one boundary: in random order
        for i in reversed(order):
            hay.insert(places[i][0], needle_text[i])
        in_text_order = [needles[i] for i in order]
        answer = ", ".join(v for q in queried for k, v in in_text_order if k == q)
        prompt = intro + "\n" + " ".join(hay)
        # the depth of the queried needle in the text around it (haystack and the other needles)
        costs = [self.count_tokens(" " + s) for s in hay]
        at, around = hay.index(needle_text[0]), sum(costs) - costs[hay.index(needle_text[0])]
        depth = sum(costs[:at]) / around if around else 0.0
        meta = {
            "task": f"sniah{self.variant}",
            "difficulty": difficulty,
            "depth": depth,
            "bucket": _bucket(depth),
            "context_tokens": self.count_tokens(prompt + " " + query),
            "chance": (2.0**-122 if self.variant == 3 else 1 / 9_000_000) ** (self.n_values * self.n_queries),
        }
        return Example(prompt, answer, query=query, meta=meta)

    def _haystack(self, rng: random.Random, budget: int) -> list[str]:
        """Sentences adding up to at most ``budget`` tokens: noise, or consecutive prose sentences."""
        if self.variant == 1:
            pool, start = _sentences(NOISE), 0
        else:
            pool = list(self.haystack) if self.haystack is not None else list(default_prose())
            if not pool:
                raise MemlabError("the S-NIAH haystack has no sentences")
            start = rng.randrange(len(pool))
        out, used, i = [], 0, start
        while True:
            sentence = pool[i % len(pool)]
            cost = self.count_tokens(" " + sentence)
            if used + cost > budget:  # fill the rest with the longest fitting run of its words
                words = sentence.split()
                lo, hi = 0, len(words)
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (
                        (mid, hi) if used + self.count_tokens(" " + " ".join(words[:mid])) <= budget else (lo, mid - 1)
                    )
                return out + [" ".join(words[:lo])] if lo else out
            out.append(sentence)
            used, i = used + cost, i + 1


@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall on token ids; ``difficulty`` is the number of key-value pairs."""

    vocab_size: int = 8192
    seq_len: int = 256
    power_a: float = 0.01  # gap distribution p(g) ~ g^(a - 1): most queries come soon after the context
    random_non_queries: bool = True  # fill the gaps with random tokens (else the filler id)
    reserved_ids: frozenset[int] = frozenset()  # ids never drawn: a tokenizer's special tokens

    @functools.cached_property
    def _ids(self) -> tuple[int, list[int], list[int], list[int]]:
        """The filler (the first free id, Zoology's 0), then the ids of keys, of values and of random filler."""
        filler, *drawn = (i for i in range(self.vocab_size) if i not in self.reserved_ids)
        half = self.vocab_size // 2
        return filler, [i for i in drawn if i < half], [i for i in drawn if i >= half], drawn

    def __call__(self, rng: random.Random, difficulty: int) -> TokenizedExample:
        n, T, V = difficulty, self.seq_len, self.vocab_size
        check_difficulty("mqar", n, 1)
        if T % 2 or 4 * n > T:
            raise MemlabError(f"MQAR needs an even seq_len >= 4 * pairs; got seq_len={T} for {n} pairs")
        filler, key_ids, value_ids, drawn = self._ids
        if min(len(key_ids), len(value_ids)) < n:
            raise MemlabError(f"MQAR vocab_size={V} has too few keys for {n} pairs (needs vocab_size >= {2 * n + 2}"
                              f" besides {len(self.reserved_ids)} reserved ids)")  # fmt: skip
        keys = rng.sample(key_ids, n)
        values = rng.sample(value_ids, n)
        context = [t for kv in zip(keys, values) for t in kv]  # k1 v1 k2 v2 ...
        space = (T - 2 * n) // 2  # query slots: a key at 2g, its value at 2g + 1
        # n distinct gaps, weighted p(g) ~ g^(a-1) (Efraimidis-Spirakis weighted sampling without replacement)
        weights = [(g + 1) ** (self.power_a - 1) for g in range(space)]
        gaps = sorted(range(space), key=lambda g: rng.random() ** (1 / weights[g]), reverse=True)[:n]
        tail = [filler] * (T - 2 * n + 1)
        mask = [False] * (T + 1)
        for key, value, g in zip(keys, values, gaps):
            tail[2 * g], tail[2 * g + 1] = key, value
            mask[2 * n + 2 * g + 1] = True
        if self.random_non_queries:  # never a key: a key seen again with another id would contradict its pair
            other = [i for i in drawn if i not in set(keys)]
            tail = [rng.choice(other) if t == filler else t for t in tail]
        meta = {"task": "mqar", "difficulty": n, "pairs": n, "chance": 1 / math.factorial(n)}
        return TokenizedExample(context + tail, mask, meta)
