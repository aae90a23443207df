"""Regular expressions for routing rules, with a bounded engine: Google RE2.

A header condition `{regex: ...}` must never let a request make matching slow, so patterns are
compiled with RE2 (the `google-re2` package, module `re2`), the engine Envoy uses for its
`safe_regex`. RE2 runs in time linear in the length of the text whatever the pattern: it has no
backtracking, and so it refuses the features that need it (backreferences such as `\\1`,
lookahead and lookbehind such as `(?=...)`); such a pattern is refused when the routing file
loads, with RE2's reason.

Matching is **full**: the whole header value must match, as Envoy's `safe_regex` does (the
pattern is anchored at both ends; write `.*canary.*` to find `canary` anywhere).

Bounds, checked at load:
- the pattern's text is at most `MAX_PATTERN_CHARS` characters;
- RE2's compiled program is at most `MAX_PROGRAM_SIZE` instructions (Envoy refuses over 100 by
  default; meshd allows 200, which a UUID pattern needs): counted repetitions such as `.{1000}`
  blow up into large programs, and a large program costs memory and time per match;
- RE2 itself is given `MAX_MEM` bytes for the program and its DFA cache (its default is 8 MiB).

Matching a value costs time linear in its length; header values are bounded by the listener's
header-size limit (`maxHeaderBytes`, 64 KiB by default).

RE2 is imported by the first pattern compiled, so a meshd whose routing files use no regex does
not load it (the extension and the C++ runtime it links cost every process about 3 MB of RSS).
"""

from __future__ import annotations

from typing import Final, Protocol

MAX_PATTERN_CHARS: Final = 1000
MAX_PROGRAM_SIZE: Final = 200
MAX_MEM: Final = 1 << 20


class Pattern(Protocol):
    """A compiled pattern, as matching uses it."""

    def fullmatch(self, text: str) -> object | None: ...


class RegexError(ValueError):
    """A pattern that is refused: RE2 cannot compile it, or it is over a bound."""


def compile_regex(pattern: str) -> Pattern:
    """`pattern` compiled by RE2 for full matching. Raises RegexError saying why it is refused."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"the pattern is {len(pattern)} characters, over the limit of {MAX_PATTERN_CHARS}")
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would also print to stderr; the reason goes in the error
    options.max_mem = MAX_MEM
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else str(exc)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        if "too large" in reason:
            raise RegexError(f"the pattern is too large for RE2's memory limit of {MAX_MEM // 1024} KiB") from None
        raise RegexError(f"RE2 cannot use this pattern: {reason} (RE2 has no backreferences or lookaround)") from None
    size = int(compiled.programsize)
    if size > MAX_PROGRAM_SIZE:
        raise RegexError(
            f"the pattern compiles to {size} RE2 instructions, over the limit of {MAX_PROGRAM_SIZE} "
            "(counted repetitions such as {1000} make large programs)"
        )
    result: Pattern = compiled
    return result
