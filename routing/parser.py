"""Text to Path, NameTree, Prefix, Dentry and Dtab, with line and column in every error.

The grammar is Finagle's (`NameTreeParsers`), read by recursive descent one character at a
time:

    dtab     ::= [dentry] (';' [dentry])*          empty entries and a trailing ';' are fine
    dentry   ::= prefix '=>' tree
    prefix   ::= '/' | '/' pelem ('/' pelem)*      pelem ::= '*' | label
    path     ::= '/' | '/' label ('/' label)*
    label    ::= ( [0-9A-Za-z_:.#$%-] | '\\x' HEX HEX )+
    tree     ::= tree1 ('|' tree1)*                Alt, loosest
    tree1    ::= weighted ('&' weighted)*          Union
    weighted ::= [number '*'] simple               number ::= digits and one optional '.'
    simple   ::= '(' tree ')' | path | '!' | '~' | '$'

Whitespace may appear between tokens, never inside a path or before `>` in `=>`. A `#`
where whitespace may appear starts a comment that runs to the end of the line; inside a
path `#` is an ordinary label character (`/#/fs`). A single weighted term without `&` is
just its tree: `0.5 * /a` parses as `/a`, as in Finagle.

Where meshd is stricter than Finagle: parentheses nest at most `MAX_NESTING` deep (the
parser recurses, and `l5d-dtab` headers come from the network), and a weight must be finite.
"""

from __future__ import annotations

import math
from typing import Final, NoReturn

from routing.dtab import ANY, Dentry, Dtab, Prefix, PrefixElem
from routing.nametree import EMPTY, FAIL, NEG, Alt, Leaf, NameTree, Union, Weighted
from routing.path import EMPTY_PATH, LABEL_CHARS, Path, decode_label

MAX_NESTING: Final = 100
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_DIGITS: Final = frozenset("0123456789")
_CONTEXT_WIDTH: Final = 100


class DtabSyntaxError(ValueError):
    """Text that is not valid dtab syntax. `line` and `column` are 1-based.

    `str(error)` is `line L, column C: reason` followed by the offending line and a caret
    under column C (and the line before it, when there is one). `short` is the first line
    alone, for places that need one line (an `l5d-err` header).
    """

    def __init__(self, reason: str, text: str, offset: int) -> None:
        self.reason = reason
        self.text = text
        self.offset = offset
        self.line, self.column = line_and_column(text, offset)
        self.short = f"line {self.line}, column {self.column}: {reason}"
        super().__init__(self.short + "\n" + context_lines(text, self.line, self.column))


def parse_path(text: str) -> Path:
    """Parse a path (`/svc/users`); whitespace and comments around it are allowed."""
    p = _Parser(text)
    path = p.path()
    p.end("end of input")
    return path


def parse_prefix(text: str) -> Prefix:
    """Parse a dentry prefix (`/http/1.1/*`)."""
    p = _Parser(text)
    prefix = p.prefix()
    p.end("end of input")
    return prefix


def parse_tree(text: str) -> NameTree[Path]:
    """Parse a name tree (`0.9 * /a & 0.1 * /b | ~`)."""
    p = _Parser(text)
    tree = p.tree()
    p.end("'|', '&' or end of input")
    return tree


def parse_dentry(text: str) -> Dentry:
    """Parse one dentry (`/svc => /#/fs`)."""
    p = _Parser(text)
    dentry = p.dentry()
    p.end("end of input")
    return dentry


def parse_dtab(text: str) -> Dtab:
    """Parse a dtab: dentries separated by `;`, with comments and blank entries allowed."""
    p = _Parser(text)
    dentries = p.dtab()
    p.end("';' or end of input")
    return Dtab(dentries)


def line_and_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset in `text`."""
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


def context_lines(text: str, line: int, column: int, *, first_line_number: int = 1) -> str:
    """The line before, the line itself (numbered) and a caret under `column`.

    `first_line_number` is the number to print for the first line of `text` (so a caller that
    embeds dtab text in a bigger file can show file line numbers).
    """
    lines = text.split("\n")
    shown = range(max(1, line - 1), min(line, len(lines)) + 1)
    width = len(str(line - 1 + first_line_number))
    out: list[str] = []
    for n in shown:
        body = lines[n - 1]
        col = column
        if len(body) > _CONTEXT_WIDTH:  # keep long one-line dtabs (headers) readable
            start = max(0, min(col - 1 - _CONTEXT_WIDTH // 2, len(body) - _CONTEXT_WIDTH))
            body = ("..." if start else "") + body[start : start + _CONTEXT_WIDTH]
            if n == line:
                col = col - start + (3 if start else 0)
        out.append(f"{n - 1 + first_line_number:>{width}} | {body.expandtabs(1)}")
        if n == line:
            out.append(" " * width + " | " + " " * (col - 1) + "^")
    return "\n".join(out)


class _Parser:
    """One pass over `text`; `i` is the index of the next unread character."""

    __slots__ = ("text", "i", "n", "nesting")

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.n = len(text)
        self.nesting = 0

    # -- grammar ---------------------------------------------------------------------------

    def dtab(self) -> tuple[Dentry, ...]:
        dentries: list[Dentry] = []
        while True:
            self.skip_space()
            if self.i < self.n and self.text[self.i] != ";":
                dentries.append(self.dentry())
                self.skip_space()
            if not self.maybe_eat(";"):
                return tuple(dentries)

    def dentry(self) -> Dentry:
        prefix = self.prefix()
        self.skip_space()
        if not self.text.startswith("=>", self.i):
            self.fail("expected '=>'")
        self.i += 2
        return Dentry(prefix, self.tree())

    def prefix(self) -> Prefix:
        self.skip_space()
        self.expect_slash("a prefix starting with '/'")
        if not self.at_prefix_elem():
            return Prefix()
        elems: list[PrefixElem] = []
        while True:
            if self.peek() == "*":
                self.i += 1
                elems.append(ANY)
            else:
                elems.append(self.label())
            if not self.maybe_eat("/"):
                return Prefix(tuple(elems))
            if not self.at_prefix_elem():
                self.fail("expected a label or '*' after '/'")

    def path(self) -> Path:
        self.skip_space()
        self.expect_slash("a path starting with '/'")
        return self.path_rest()

    def tree(self) -> NameTree[Path]:
        trees = [self.tree1()]
        while True:
            self.skip_space()
            if not self.maybe_eat("|"):
                break
            trees.append(self.tree1())
        return trees[0] if len(trees) == 1 else Alt(tuple(trees))

    def tree1(self) -> NameTree[Path]:
        branches = [self.weighted()]
        while True:
            self.skip_space()
            if not self.maybe_eat("&"):
                break
            branches.append(self.weighted())
        return branches[0].tree if len(branches) == 1 else Union(tuple(branches))

    def weighted(self) -> Weighted[Path]:
        self.skip_space()
        weight = 1.0
        c = self.peek()
        if c in _DIGITS or c == ".":
            weight = self.number()
            self.skip_space()
            if not self.maybe_eat("*"):
                self.fail("expected '*' after a weight")
            self.skip_space()
        return Weighted(weight, self.simple())

    def simple(self) -> NameTree[Path]:
        self.skip_space()
        c = self.peek()
        if c == "/":
            self.i += 1
            return Leaf(self.path_rest())
        if c == "(":
            if self.nesting >= MAX_NESTING:
                self.fail(f"parentheses nested more than {MAX_NESTING} deep")
            self.i += 1
            self.nesting += 1
            tree = self.tree()
            self.skip_space()
            if not self.maybe_eat(")"):
                self.fail("expected ')', '|' or '&'")
            self.nesting -= 1
            return tree
        if c == "!":
            self.i += 1
            return FAIL
        if c == "~":
            self.i += 1
            return NEG
        if c == "$":
            self.i += 1
            return EMPTY
        self.fail("expected a path, '(', '!', '~' or '$'")

    def number(self) -> float:
        start = self.i
        seen_dot = False
        while True:
            c = self.peek()
            if c == ".":
                if seen_dot:
                    self.fail("a weight has at most one '.'")
                seen_dot = True
            elif c not in _DIGITS:
                break
            self.i += 1
        literal = self.text[start : self.i]
        if literal == ".":
            self.i = start
            self.fail("expected a weight (digits with an optional '.')")
        weight = float(literal)
        if not math.isfinite(weight):
            self.i = start
            self.fail("weight is too large")
        return weight

    def path_rest(self) -> Path:
        """The labels after a path's first '/' (already eaten)."""
        if not self.at_label():
            return EMPTY_PATH
        labels = [self.label()]
        while self.maybe_eat("/"):
            if not self.at_label():
                self.fail("expected a label after '/'")
            labels.append(self.label())
        return Path(labels)

    def label(self) -> str:
        text, start = self.text, self.i
        i = start
        while i < self.n and text[i] in LABEL_CHARS:
            i += 1
        if i < self.n and text[i] == "\\":
            return self.escaped_label(start)
        if i == start:
            self.fail("expected a label")
        self.i = i
        return text[start:i]

    def escaped_label(self, start: int) -> str:
        """A label with `\\xHH` escapes; they are bytes, decoded as UTF-8 (see path.py)."""
        text = self.text
        out = bytearray()
        self.i = start
        while self.i < self.n:
            c = text[self.i]
            if c in LABEL_CHARS:
                out.append(ord(c))
                self.i += 1
            elif c == "\\":
                if self.peek(1) != "x":
                    self.i += 1
                    self.fail("expected 'x' after '\\' (escapes are \\xHH)")
                for k in (2, 3):
                    if self.peek(k) not in _HEX:
                        self.i += k
                        self.fail("expected a hex digit in a \\xHH escape")
                out.append(int(text[self.i + 2 : self.i + 4], 16))
                self.i += 4
            else:
                break
        return decode_label(out)

    # -- characters ------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.text[j] if j < self.n else ""

    def maybe_eat(self, c: str) -> bool:
        if self.i < self.n and self.text[self.i] == c:
            self.i += 1
            return True
        return False

    def expect_slash(self, what: str) -> None:
        if not self.maybe_eat("/"):
            self.fail(f"expected {what}")

    def at_label(self) -> bool:
        c = self.peek()
        return bool(c) and (c in LABEL_CHARS or c == "\\")

    def at_prefix_elem(self) -> bool:
        return self.peek() == "*" or self.at_label()

    def skip_space(self) -> None:
        """Skip whitespace and `#` comments (a comment runs to the end of its line)."""
        text, n, i = self.text, self.n, self.i
        while i < n:
            c = text[i]
            if c == "#":
                nl = text.find("\n", i)
                i = n if nl < 0 else nl + 1
            elif c.isspace():
                i += 1
            else:
                break
        self.i = i

    def end(self, expected: str) -> None:
        self.skip_space()
        if self.i < self.n:
            self.fail(f"expected {expected}")

    def fail(self, reason: str) -> NoReturn:
        found = self.peek()
        what = "end of input" if not found else repr(found)
        raise DtabSyntaxError(f"{reason}, found {what}", self.text, self.i)
