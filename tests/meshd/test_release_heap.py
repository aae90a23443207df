"""`release_free_heap`: after start-up meshd asks glibc to give its free heap pages back
(`malloc_trim(0)`); a C library without it is left alone."""

from __future__ import annotations

import platform

import pytest

from meshd.daemon import release_free_heap


class _Libc:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def test_trims_with_no_padding() -> None:
    libc = _Libc()
    assert release_free_heap(lambda: libc) is True
    assert libc.calls == [0]


def test_a_c_library_without_malloc_trim_is_left_alone() -> None:
    assert release_free_heap(lambda: object()) is False


def test_a_c_library_that_cannot_be_loaded_is_left_alone() -> None:
    def fail() -> object:
        raise OSError("no C library")

    assert release_free_heap(fail) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_real_glibc_has_it() -> None:
    assert release_free_heap() is True
