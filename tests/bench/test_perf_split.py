"""bench/perf_split.py: each `perf script` sample is charged to one row, by its frames."""

from __future__ import annotations

from pathlib import Path

from bench.perf_split import EPOLL, OTHER, READS, UVLOOP, WRITES, main, row_of, samples, split, table

PARSE = "parsing: httptools and the codec's callbacks"
GLUE = "the fast path and the two connections' own code"

SCRIPT = """\
python 1 10.0:    2004008 cpu-clock:pppH:
\t ffffffff tcp_sendmsg+0x10 ([kernel.kallsyms])
\t 11 __GI___libc_write+0x1 (/usr/lib/libc.so.6)
\t 22 CPyDef_listener___ServerProtocol____write_response+0x9 (/x/meshd__mypyc.so)

python 1 10.1:    2004008 cpu-clock:pppH:
\t ffffffff ep_poll+0x10 ([kernel.kallsyms])
\t 33 epoll_pwait+0x5 (/usr/lib/libc.so.6)
\t 44 uv__io_poll+0x5 (/x/uvloop/loop.so)

python 1 10.2:    2004008 cpu-clock:pppH:
\t ffffffff tcp_recvmsg+0x10 ([kernel.kallsyms])
\t 55 read+0x5 (/usr/lib/libc.so.6)

python 1 10.3:    2004008 cpu-clock:pppH:
\t 66 llhttp__internal__run+0x5 (/x/httptools/parser.so)
\t 77 CPyDef_http___codec___ResponseCodec____feed_parser+0x4 (/x/meshd__mypyc.so)
\t 88 CPyDef_connection___UpstreamConnection___data_received+0x4 (/x/meshd__mypyc.so)

python 1 10.4:    2004008 cpu-clock:pppH:
\t 99 _PyObject_Malloc+0x5 (/x/libpython3.11.so)
\t aa CPyDef_fastpath___FastPath___plan+0x5 (/x/meshd__mypyc.so)

python 1 10.5:    2004008 cpu-clock:pppH:
\t bb __pyx_f_6uvloop_4loop___uv_stream_on_read+0x5 (/x/uvloop/loop.so)
\t cc uv__read+0x5 (/x/uvloop/loop.so)

python 1 10.6:    2004008 cpu-clock:pppH:
\t dd _PyEval_EvalFrameDefault+0x5 (/x/libpython3.11.so)
"""


def test_each_sample_goes_to_its_row() -> None:
    rows = [row_of(frames) for frames in samples(SCRIPT)]
    assert rows == [WRITES, EPOLL, READS, PARSE, GLUE, UVLOOP, OTHER]


def test_the_innermost_matching_row_wins_over_the_callers() -> None:
    # parsing happens under the upstream connection's data_received: charged to parsing
    frames = samples(SCRIPT)[3]
    assert frames[-1].startswith("CPyDef_connection")
    assert row_of(frames) == PARSE


def test_table_gives_shares_and_microseconds() -> None:
    counts, total = split(samples(SCRIPT))
    assert total == 7
    text = table(counts, total, 7.0)
    assert f"| {WRITES} | 14.3% | 1.00 |" in text
    assert "7 samples" in text


def test_main_refuses_a_file_without_samples(tmp_path: Path) -> None:
    empty = tmp_path / "perf.txt"
    empty.write_text("")
    assert main([str(empty)]) == 1
    full = tmp_path / "full.txt"
    full.write_text(SCRIPT)
    assert main([str(full), "--us", "7"]) == 0
