"""Per-character labels of a document: Python nesting depth and syntactic roles, or prose roles.

Code labels come from the standard ``tokenize`` module: the indentation level (INDENT /
DEDENT) and the bracket depth (unclosed ``( [ {``) at every character, and a role for every
Python token (``def``/``class``, ``return``/``if``, ``for``/``while``, ``self``, identifiers,
parentheses, ``:``, ``.``, ...).  A bracket belongs to the depth outside it.  Lines may end in
LF, CRLF or a lone CR, as Python reads them; a line end is a ``newline``.  Text that is
not Python (it does not parse) gets prose roles: punctuation, function words, content words.
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import tokenize
import warnings
from dataclasses import dataclass

import numpy as np

CODE_ROLES = (
    "def/class", "return/if", "for/while", "self", "identifier", "keyword",
    "paren", "colon", "dot", "operator", "string", "number", "comment", "newline", "other",
)  # fmt: skip
TEXT_ROLES = ("punctuation", "function word", "content word", "numeral", "space")
ROLES = CODE_ROLES + TEXT_ROLES
ROLE_INDEX = {name: i for i, name in enumerate(ROLES)}
UNKNOWN_DEPTH = -1

_KEYWORD_ROLES = {"def": "def/class", "class": "def/class", "return": "return/if", "if": "return/if",
                  "elif": "return/if", "else": "return/if", "for": "for/while", "while": "for/while"}  # fmt: skip
_OP_ROLES = {"(": "paren", ")": "paren", ":": "colon", ".": "dot"}
_STRING_TYPES = {tokenize.STRING} | {getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
                                      if hasattr(tokenize, n)}  # fmt: skip
FUNCTION_WORDS = frozenset(
    """a an the and or but nor so yet if then than as of in on at to for from by with without into onto
    upon about over under between through during before after above below up down out off is are was were
    be been being am do does did has have had will would shall should can could may might must not no
    it its this that these those he she they we you i me him her them us my your his their our which who
    whom whose what when where why how all any each some such there here also only just very""".split()
)
_WORD = re.compile(r"\w+")
_LONE_CR = re.compile(r"\r(?!\n)")


@dataclass
class CharLabels:
    """Labels of every character of a text (arrays of its length)."""

    indent: np.ndarray  # int16: indentation level, UNKNOWN_DEPTH outside Python
    bracket: np.ndarray  # int16: bracket depth, UNKNOWN_DEPTH outside Python
    role: np.ndarray  # int16: index into ROLES


def char_labels(text: str) -> CharLabels:
    """Python labels when ``text`` parses as Python, prose labels otherwise."""
    return python_labels(text) or prose_labels(text)


def python_labels(text: str) -> CharLabels | None:
    """Depths and roles of Python source, or None when it does not parse or tokenize."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like
            ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    n = len(text)
    indent = np.zeros(n, dtype=np.int16)
    bracket = np.zeros(n, dtype=np.int16)
    space = np.array([c.isspace() for c in text], dtype=bool)
    role = np.where(space, ROLE_INDEX["space"], ROLE_INDEX["other"]).astype(np.int16)
    # tokenize ends lines at \n (so at \r\n too) but not at a lone \r, which Python reads as a line end:
    # it becomes a \n, one character for one, so every offset stays that of ``text``
    text = _LONE_CR.sub("\n", text)
    line_starts = np.concatenate([[0], np.flatnonzero(np.frombuffer(text.encode("utf-32-le"), np.uint32) == 10) + 1])
    level = depth = done = indent_done = 0
    line_has_code = False
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.INDENT:
                level += 1
            elif tok.type == tokenize.DEDENT:
                level -= 1
            elif tok.type != tokenize.ENDMARKER:
                start = int(line_starts[tok.start[0] - 1]) + tok.start[1]
                end = int(line_starts[tok.end[0] - 1]) + tok.end[1]
                if tok.type == tokenize.OP and tok.string in ")]}":
                    depth -= 1
                bracket[done:end] = depth  # the gap before the token, and the token
                role[start:end] = ROLE_INDEX[_code_role(tok)]
                if tok.type == tokenize.OP and tok.string in "([{":
                    depth += 1
                done = max(done, end)
                # a comment or blank line is labelled with the next code line: tokenize emits the
                # INDENT / DEDENT of a block only just before that line's first token
                if line_has_code or tok.type not in (tokenize.COMMENT, tokenize.NL):
                    indent[indent_done:end] = level
                    indent_done = max(indent_done, end)
                line_has_code = tok.type not in (tokenize.NEWLINE, tokenize.NL) and (
                    line_has_code or tok.type != tokenize.COMMENT
                )
    except (tokenize.TokenError, SyntaxError):
        return None
    indent[indent_done:], bracket[done:] = level, depth
    return CharLabels(indent, bracket, role)


def _code_role(tok: tokenize.TokenInfo) -> str:
    if tok.type == tokenize.NAME:
        if tok.string in _KEYWORD_ROLES:
            return _KEYWORD_ROLES[tok.string]
        if keyword.iskeyword(tok.string):
            return "keyword"
        return "self" if tok.string == "self" else "identifier"
    if tok.type == tokenize.OP:
        return _OP_ROLES.get(tok.string, "operator")
    if tok.type in _STRING_TYPES:
        return "string"
    if tok.type == tokenize.NUMBER:
        return "number"
    if tok.type == tokenize.COMMENT:
        return "comment"
    if tok.type in (tokenize.NEWLINE, tokenize.NL):
        return "newline"
    return "other"


def prose_labels(text: str) -> CharLabels:
    """Roles of prose: words are function words, content words or numerals; the rest punctuation or space."""
    n = len(text)
    space = np.array([c.isspace() for c in text], dtype=bool)
    role = np.where(space, ROLE_INDEX["space"], ROLE_INDEX["punctuation"]).astype(np.int16)
    for m in _WORD.finditer(text):
        word = m.group()
        kind = "numeral" if word.isdigit() else "function word" if word.lower() in FUNCTION_WORDS else "content word"
        role[m.start() : m.end()] = ROLE_INDEX[kind]
    unknown = np.full(n, UNKNOWN_DEPTH, dtype=np.int16)
    return CharLabels(unknown, unknown.copy(), role)
