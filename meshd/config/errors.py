"""ConfigError: every problem found in a config file, each pointing at its YAML path and line.

The loader collects problems instead of stopping at the first one, so an operator fixing a
file sees the whole list in one `meshd check` run. A problem names the place in YAML terms
(`routers[0].servers[0].port`, camelCase keys and `[i]` indices), never in Python terms,
because the YAML file is all the reader has in front of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file.

    `path` is the YAML path of the offending value ("" for the document itself), `line` is
    1-based (None when the problem has no place in the text, e.g. an unreadable file) and
    `column` is set when the place is known to the character: YAML syntax errors, and mistakes
    inside dtab text (counted in the file, inside `dtab: |` blocks too).
    """

    path: str
    line: int | None
    message: str
    column: int | None = None
    #: "error" makes the file unusable; "warning" (from `meshd check`'s routing checks) does not,
    #: unless `meshd check --strict` is asked for
    severity: str = "error"

    def __str__(self) -> str:
        parts = ["warning"] if self.severity == "warning" else []
        if self.path:
            parts.append(self.path)
        if self.line is not None:
            parts.append(
                f"line {self.line}" if self.column is None else f"line {self.line}, column {self.column}"
            )
        parts.append(self.message)
        return ": ".join(parts)


class ConfigError(Exception):
    """A config file is not valid; `problems` lists every reason, in the order they appear in the file.

    `str()` gives one line per problem (for logs and tests); `format()` gives the longer
    message `meshd check` prints, quoting the offending lines of the file when it has them.
    """

    def __init__(
        self, problems: Iterable[ConfigProblem], *, source: str = "<config>", text: str | None = None
    ):
        self.problems: list[ConfigProblem] = list(problems)
        if not self.problems:
            raise ValueError("a ConfigError needs at least one problem")
        self.source = source
        self._lines = text.splitlines() if text is not None else []
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)

    def format(self) -> str:
        """Render a report for humans: a heading, then each problem with the YAML line it is about."""
        count = len(self.problems)
        warnings = sum(1 for p in self.problems if p.severity == "warning")
        note = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
        out = [f"{self.source}: {count} problem{'s' if count != 1 else ''} found{note}:"]
        for problem in self.problems:
            out.append(f"  {problem}")
            if problem.line is not None and 1 <= problem.line <= len(self._lines):
                out.append(f"    {problem.line:>4} | {self._lines[problem.line - 1]}")
                if problem.column is not None:
                    out.append(f"    {'':>4} | {' ' * (problem.column - 1)}^")
        return "\n".join(out)
