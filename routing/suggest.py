""""Did you mean" suggestions, one rule for every config key, kind and routing-file key.

Used by meshd's config loader (keys, `kind:` names, fixed choices) and by the routing-file
loader, so that `meshd check` suggests the same way everywhere:

* case and the separators `_`, `-` do not matter (`decay_time_ms` suggests `decayTimeMs`);
* linkerd 1's kind names are understood: `io.l5d.k8s` suggests `k8s`,
  `io.l5d.header.token` suggests `header`, `io.l5d.http.retryableRead5XX` suggests
  `retryableRead5XX`, `io.l5d.k8s.daemonset` suggests `daemonset`;
* otherwise the closest option by `difflib` (ratio >= 0.6, compared without case and
  separators, so `baseDtab` suggests `dtab`), if any.

The suffix is always written the same way: `; did you mean "x"?`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

#: linkerd 1 kind names whose meshd name is not just the name without its `io.l5d.` prefix
LINKERD_KINDS: Final[dict[str, str]] = {
    "io.l5d.header.token": "header",
    "io.l5d.dnssrv": "dns",
    "io.l5d.k8s.daemonset": "daemonset",
    "io.l5d.k8s.localnode": "localnode",
}

#: prefixes linkerd 1 puts in front of its kind names, longest first
_LINKERD_PREFIXES: Final = ("io.l5d.http.", "io.l5d.k8s.", "io.l5d.", "io.buoyant.")


def normalize(word: str) -> str:
    """Case and separators do not matter for suggestions."""
    return word.replace("_", "").replace("-", "").lower()


def linkerd_stem(word: str) -> str | None:
    """meshd's spelling of a linkerd 1 kind name (`io.l5d.k8s` -> `k8s`), or None if `word` is not one."""
    if word in LINKERD_KINDS:
        return LINKERD_KINDS[word]
    for prefix in _LINKERD_PREFIXES:
        if word.startswith(prefix) and len(word) > len(prefix):
            return word[len(prefix) :]
    return None


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option `word` most likely meant, or None."""
    candidates = [option for option in options if option != word]
    if not candidates:
        return None
    normalized = {normalize(option): option for option in candidates}
    match = normalized.get(normalize(word))
    if match is not None:
        return match
    stem = linkerd_stem(word)
    if stem is not None:
        match = normalized.get(normalize(stem))
        if match is not None:
            return match
    import difflib  # loaded only to explain a mistake, not by every process that reads a config

    close = difflib.get_close_matches(normalize(stem or word), list(normalized), n=1, cutoff=0.6)
    return normalized[close[0]] if close else None


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """A '; did you mean "x"?' suffix for the closest option, or ""."""
    match = closest(word, options)
    return f'; did you mean "{match}"?' if match is not None else ""
