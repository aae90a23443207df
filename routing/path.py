"""Path: a slash-separated sequence of labels, as Finagle's `Path` (`/svc/accounts`).

A path is an immutable tuple of label strings. `Path.read("/a/b")` parses the textual
form; `path.show()` prints it back. The empty path is `/`.

How labels are written (Finagle `Path.read`/`Path.show`): a label is one or more of the
characters `[0-9A-Za-z_:.#$%-]` or `\\xHH` escapes. Finagle labels are bytes; here they are
`str`, and escapes denote UTF-8 bytes: `\\xc3\\xa9` reads as "é" and "é" shows as
`\\xc3\\xa9`. Bytes that are not valid UTF-8 survive a round trip through the surrogateescape
error handler, so `Path.read(p.show()) == p` for every path.
"""

from __future__ import annotations

from typing import Final

LABEL_CHARS: Final = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_:.#$%-")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
# Showable bytes map to themselves, every other byte to its escape; built once.
_BYTE_TEXT: Final = tuple(chr(b) if chr(b) in LABEL_CHARS else f"\\x{b:02x}" for b in range(256))


class PathError(ValueError):
    """Raised for text that is not a valid path."""


class Path(tuple[str, ...]):
    """An immutable sequence of labels. Cheap to hash and compare: it is a tuple."""

    __slots__ = ()

    def __new__(cls, labels: tuple[str, ...] | list[str] = ()) -> Path:
        return super().__new__(cls, labels)

    @classmethod
    def of(cls, *labels: str) -> Path:
        return cls(labels)

    @classmethod
    def read(cls, text: str) -> Path:
        """Parse `/a/b\\x2fc` into ("a", "b/c"); `/` is the empty path."""
        if not text.startswith("/"):
            raise PathError(f"path must start with '/': {text!r}")
        if text == "/":
            return EMPTY_PATH
        return cls([unescape_label(raw, text) for raw in text[1:].split("/")])

    def show(self) -> str:
        if not self:
            return "/"
        return "".join("/" + escape_label(label) for label in self)

    def starts_with(self, prefix: Path) -> bool:
        n = len(prefix)
        return len(self) >= n and tuple.__getitem__(self, slice(0, n)) == tuple(prefix)

    def take(self, n: int) -> Path:
        return Path(tuple.__getitem__(self, slice(0, n)))

    def drop(self, n: int) -> Path:
        return Path(tuple.__getitem__(self, slice(n, None)))

    def concat(self, other: Path) -> Path:
        if not other:
            return self
        if not self:
            return other
        return Path(tuple(self) + tuple(other))

    def __repr__(self) -> str:
        return f"Path({self.show()})"

    def __str__(self) -> str:
        return self.show()


EMPTY_PATH: Final = Path()


def escape_label(label: str) -> str:
    """Show one label: label characters as they are, every other UTF-8 byte as `\\xHH`."""
    for c in label:
        if c not in LABEL_CHARS:
            break
    else:
        if label:
            return label
    return "".join(_BYTE_TEXT[b] for b in label_bytes(label))


def label_bytes(label: str) -> bytes:
    """The bytes a label stands for (UTF-8; undecodable bytes were kept as surrogate escapes)."""
    try:
        return label.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return label.encode("utf-8", "surrogatepass")


def decode_label(data: bytes | bytearray) -> str:
    """The label for some bytes; the inverse of `label_bytes`."""
    return bytes(data).decode("utf-8", "surrogateescape")


def unescape_label(raw: str, whole: str) -> str:
    """Decode one written label (`a\\x2fb`), raising PathError that quotes `whole`."""
    if not raw:
        raise PathError(f"empty label in path {whole!r}")
    if "\\" not in raw:
        for c in raw:
            if c not in LABEL_CHARS:
                raise PathError(f"invalid character {c!r} in path {whole!r}")
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            if i + 3 < len(raw) and raw[i + 1] == "x" and raw[i + 2] in _HEX and raw[i + 3] in _HEX:
                out.append(int(raw[i + 2 : i + 4], 16))
                i += 4
                continue
            raise PathError(f"bad escape in path {whole!r}: expected \\xHH")
        if c not in LABEL_CHARS:
            raise PathError(f"invalid character {c!r} in path {whole!r}")
        out.append(ord(c))
        i += 1
    return decode_label(out)
