"""The fs namer: the endpoint-file format, and how scans turn file changes into address-set changes."""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.discovery.addr import Addr, Address, Bound, Failed, Neg, Pending
from meshd.discovery.fs import (
    INLINE_BYTES,
    FileFormatError,
    FileTooLarge,
    FsNamer,
    FsNamerConfig,
    load_endpoints_file,
    parse_endpoints_file,
)
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.namer import BoundName
from routing.nametree import NEG, Leaf
from routing.path import Path
from tests.support.waiting import wait_until

# -- the file format --------------------------------------------------------------------------------


def test_lines_are_host_port_and_an_optional_weight():
    text = "10.0.0.1 8080\n10.0.0.2 8081 2.5\nhost-c.internal 80 3\n"
    assert parse_endpoints_file(text) == {
        Address("10.0.0.1", 8080),
        Address("10.0.0.2", 8081, weight=2.5),
        Address("host-c.internal", 80, weight=3.0),
    }


def test_blank_lines_comments_and_extra_spaces_are_ignored():
    text = "# accounts replicas\n\n   10.0.0.1   8080   # the first\n\t10.0.0.2\t8080\t\n# 10.0.0.3 8080\n"
    assert parse_endpoints_file(text) == {Address("10.0.0.1", 8080), Address("10.0.0.2", 8080)}


def test_empty_file_is_an_empty_set():
    assert parse_endpoints_file("") == frozenset()
    assert parse_endpoints_file("# nobody yet\n") == frozenset()


def test_ipv6_literal_may_be_bracketed():
    assert parse_endpoints_file("[::1] 8080\n::2 8081\n") == {Address("::1", 8080), Address("::2", 8081)}
    assert Address("::1", 8080).show() == "[::1]:8080"


def test_a_repeated_host_and_port_keeps_the_last_line():
    assert parse_endpoints_file("10.0.0.1 80 1\n10.0.0.1 80 4\n") == {Address("10.0.0.1", 80, weight=4.0)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1\n", "line 1: expected 'host port"),
        ("ok 80\n10.0.0.1 80 1 2\n", "line 2: expected 'host port"),
        ("10.0.0.1 http\n", "line 1: port must be an integer, got 'http'"),
        ("10.0.0.1 0\n", "line 1: port must be 1-65535, got 0"),
        ("10.0.0.1 65536\n", "line 1: port must be 1-65535, got 65536"),
        ("\n\n10.0.0.1 80 heavy\n", "line 3: weight must be a number, got 'heavy'"),
        ("10.0.0.1 80 0\n", "line 1: weight must be a positive number, got '0'"),
        ("10.0.0.1 80 -1\n", "line 1: weight must be a positive number"),
        ("10.0.0.1 80 nan\n", "line 1: weight must be a positive number"),
        ("10.0.0.1 80 inf\n", "line 1: weight must be a positive number"),
    ],
)
def test_bad_lines_are_refused_with_their_line_number(text, message):
    with pytest.raises(FileFormatError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_endpoints_file(text)


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
)
addresses = st.builds(
    Address,
    host=hosts,
    port=st.integers(1, 65535),
    weight=st.one_of(st.just(1.0), st.floats(0.001, 1000.0)),
)


@given(st.lists(addresses, max_size=20, unique_by=lambda a: a.key), st.booleans())
def test_written_addresses_parse_back(addrs, with_comments):
    lines = []
    for a in addrs:
        line = f"{a.host} {a.port}" if a.weight == 1.0 else f"{a.host} {a.port} {a.weight!r}"
        lines.append(line + ("  # replica" if with_comments else ""))
    assert parse_endpoints_file("\n".join(lines)) == frozenset(addrs)


# -- the namer --------------------------------------------------------------------------------------


def write(root: pathlib.Path, name: str, text: str) -> None:
    """Replace a file atomically, as deployment tooling does."""
    tmp = root / f".{name}.tmp"
    tmp.write_text(text)
    tmp.replace(root / name)


@pytest.fixture
async def namer(tmp_path: pathlib.Path):
    (tmp_path / "disco").mkdir()
    namer = FsNamerConfig(root_dir="disco", poll_interval_ms=10).build(Runtime(base_dir=tmp_path))
    yield namer
    await namer.close()


def addr_of(namer: FsNamer, name: str) -> Observable[Addr]:
    return namer.addr(Path.read(f"/#/fs/{name}"))


async def test_lookup_binds_a_known_name_and_keeps_the_residual(namer):
    write(namer.root, "accounts", "10.0.0.1 80\n")
    await namer.start()
    tree = namer.lookup(Path.read("/accounts/v2"))
    assert tree == Leaf(BoundName(id=Path.read("/#/fs/accounts"), residual=Path.read("/v2")))
    assert namer.lookup(Path.read("/nosuch")) == NEG
    assert namer.lookup(Path.read("/")) == NEG
    assert addr_of(namer, "accounts").get() == Bound(frozenset({Address("10.0.0.1", 80)}))
    assert isinstance(addr_of(namer, "nosuch").get(), Neg)


async def test_edit_publishes_the_new_set_once_and_an_identical_rewrite_publishes_nothing(namer):
    write(namer.root, "svc", "10.0.0.1 80\n")
    await namer.start()
    seen: list[Addr] = []
    addr_of(namer, "svc").subscribe(seen.append, replay=False)
    write(namer.root, "svc", "10.0.0.1 80\n10.0.0.2 80\n")
    namer.scan()
    namer.scan()
    assert seen == [Bound(frozenset({Address("10.0.0.1", 80), Address("10.0.0.2", 80)}))]
    write(namer.root, "svc", "# same replicas\n10.0.0.2 80\n10.0.0.1 80\n")
    namer.scan()
    assert len(seen) == 1


async def test_bad_edit_keeps_the_last_good_set_and_a_fix_applies(namer):
    write(namer.root, "svc", "10.0.0.1 80\n")
    await namer.start()
    seen: list[Addr] = []
    addr_of(namer, "svc").subscribe(seen.append, replay=False)
    write(namer.root, "svc", "10.0.0.1 eighty\n")
    namer.scan()
    assert seen == []
    assert addr_of(namer, "svc").get() == Bound(frozenset({Address("10.0.0.1", 80)}))
    write(namer.root, "svc", "10.0.0.9 80\n")
    namer.scan()
    assert seen == [Bound(frozenset({Address("10.0.0.9", 80)}))]


async def test_a_file_bad_from_the_start_is_failed_not_negative(namer):
    write(namer.root, "svc", "garbage\n")
    await namer.start()
    addr = addr_of(namer, "svc").get()
    assert isinstance(addr, Failed) and "svc" in addr.reason
    assert namer.lookup(Path.read("/svc")) != NEG  # the name exists; its endpoints are unknown


async def test_deleting_a_file_makes_the_name_negative_and_bumps_the_version(namer):
    write(namer.root, "svc", "10.0.0.1 80\n")
    await namer.start()
    obs = addr_of(namer, "svc")
    version = namer.version.get()
    (namer.root / "svc").unlink()
    namer.scan()
    assert isinstance(obs.get(), Neg)
    assert namer.lookup(Path.read("/svc")) == NEG
    assert namer.version.get() == version + 1


async def test_a_new_file_bumps_the_version_but_an_edit_does_not(namer):
    await namer.start()
    version = namer.version.get()
    write(namer.root, "svc", "10.0.0.1 80\n")
    namer.scan()
    assert namer.version.get() == version + 1
    write(namer.root, "svc", "10.0.0.2 80\n")
    namer.scan()
    assert namer.version.get() == version + 1


async def test_hidden_files_and_directories_are_not_services(namer):
    write(namer.root, "svc", "10.0.0.1 80\n")
    (namer.root / ".hidden").write_text("10.0.0.1 80\n")
    (namer.root / "adir").mkdir()
    await namer.start()
    assert namer.statistics()["services"] == 1
    assert namer.lookup(Path.read("/.hidden")) == NEG
    assert namer.lookup(Path.read("/adir")) == NEG


async def test_configmap_style_symlink_swap_is_seen(namer):
    """A Kubernetes ConfigMap volume: `svc -> ..data/svc`, and `..data` is swapped to a new directory."""
    root = namer.root
    (root / "..v1").mkdir()
    (root / "..v1" / "svc").write_text("10.0.0.1 80\n")
    os.symlink("..v1", root / "..data")
    os.symlink("..data/svc", root / "svc")
    await namer.start()
    assert addr_of(namer, "svc").get() == Bound(frozenset({Address("10.0.0.1", 80)}))
    (root / "..v2").mkdir()
    (root / "..v2" / "svc").write_text("10.0.0.2 80\n")
    os.symlink("..v2", root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")
    namer.scan()
    assert addr_of(namer, "svc").get() == Bound(frozenset({Address("10.0.0.2", 80)}))
    assert namer.statistics()["services"] == 1


async def test_a_missing_directory_names_nothing_until_it_appears(tmp_path):
    namer = FsNamerConfig(root_dir="later", poll_interval_ms=10).build(Runtime(base_dir=tmp_path))
    await namer.start()
    try:
        assert namer.lookup(Path.read("/svc")) == NEG
        (tmp_path / "later").mkdir()
        write(tmp_path / "later", "svc", "10.0.0.1 80\n")
        namer.scan()
        assert namer.lookup(Path.read("/svc")) != NEG
    finally:
        await namer.close()


async def test_polling_applies_an_edit_without_anyone_calling_scan(namer):
    write(namer.root, "svc", "10.0.0.1 80\n")
    await namer.start()
    obs = addr_of(namer, "svc")
    changed = asyncio.ensure_future(obs.wait_changed())
    await asyncio.sleep(0)
    write(namer.root, "svc", "10.0.0.3 80\n")
    assert await asyncio.wait_for(changed, 2) == Bound(frozenset({Address("10.0.0.3", 80)}))
    assert namer.statistics()["scans"] >= 2


async def test_release_forgets_an_unwatched_name(namer):
    write(namer.root, "svc", "10.0.0.1 80\n")
    await namer.start()
    first = addr_of(namer, "svc")
    namer.release(Path.read("/#/fs/svc"))
    assert addr_of(namer, "svc") is not first
    watched = addr_of(namer, "svc")
    unsubscribe = watched.subscribe(lambda _: None)
    namer.release(Path.read("/#/fs/svc"))
    assert addr_of(namer, "svc") is watched
    unsubscribe()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"root_dir": ""}, "rootDir: must not be empty"),
        ({"root_dir": "d", "prefix": "not a path"}, "prefix:"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FsNamerConfig(**kwargs)


def test_relative_root_resolves_against_the_config_directory(tmp_path):
    namer = FsNamerConfig(root_dir="disco").build(Runtime(base_dir=tmp_path))
    assert namer.root == tmp_path / "disco"
    assert namer.prefix == Path.read("/#/fs")
    assert "disco" in repr(namer)


# -- size limits, loads off the event loop, running out of file descriptors ---------------------------


def build(tmp_path: pathlib.Path, loader=load_endpoints_file, **config: object) -> FsNamer:
    (tmp_path / "disco").mkdir(exist_ok=True)
    return FsNamer(FsNamerConfig(root_dir="disco", poll_interval_ms=10, **config), Runtime(base_dir=tmp_path), loader=loader)


def big_file(replicas: int) -> str:
    text = "".join(f"10.0.{i // 250}.{i % 250} 8080\n" for i in range(replicas))
    assert len(text) > INLINE_BYTES
    return text


async def test_a_file_over_max_file_bytes_is_refused_without_being_opened(tmp_path, caplog):
    calls: list[pathlib.Path] = []

    def loader(path: pathlib.Path, max_bytes: int) -> frozenset[Address]:
        calls.append(path)
        return load_endpoints_file(path, max_bytes)

    namer = build(tmp_path, loader, max_file_bytes=100)
    write(namer.root, "svc", "10.0.0.1 80\n")
    await namer.start()
    try:
        write(namer.root, "svc", "10.0.0.2 80\n" + "#" * 100)
        calls.clear()
        namer.scan()
        namer.scan()
        assert calls == []  # refused on the scan's stat
        assert namer.errors == 1
        assert addr_of(namer, "svc").get() == Bound(frozenset({Address("10.0.0.1", 80)}))
        (message,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert f"{namer.root / 'svc'}: the file is 112 bytes, over the limit of 100 bytes (maxFileBytes)" in message
        write(namer.root, "fresh", "#" * 101)  # never good: failed, not negative
        namer.scan()
        assert isinstance(addr_of(namer, "fresh").get(), Failed)
        assert namer.errors == 2
    finally:
        await namer.close()


def test_load_endpoints_file_reads_at_most_the_limit(tmp_path):
    path = tmp_path / "svc"
    path.write_text("10.0.0.1 80\n" * 10)
    assert load_endpoints_file(path, 120) == {Address("10.0.0.1", 80)}
    with pytest.raises(FileTooLarge, match="the file is 120 bytes, over the limit of 119 bytes"):
        load_endpoints_file(path, 119)


async def test_a_large_file_loads_in_a_worker_thread_and_a_new_name_is_pending_meanwhile(tmp_path):
    import threading

    entered = threading.Event()
    release = threading.Event()

    def loader(path: pathlib.Path, max_bytes: int) -> frozenset[Address]:
        entered.set()
        release.wait(10)
        return load_endpoints_file(path, max_bytes)

    namer = build(tmp_path, loader)
    await namer.start()
    try:
        write(namer.root, "big", big_file(2000))
        namer.scan()  # returns at once: the load runs in a thread
        await wait_until(entered.is_set, timeout=5, message="the load to start")
        assert namer.lookup(Path.read("/big")) != NEG
        assert isinstance(addr_of(namer, "big").get(), Pending)
        release.set()
        await namer.settled()
        current = addr_of(namer, "big").get()
        assert isinstance(current, Bound) and len(current.addresses) == 2000
        assert namer.last_load_thread not in (None, threading.get_ident())
    finally:
        release.set()
        await namer.close()


async def test_a_slow_load_of_an_older_version_never_replaces_a_newer_one(tmp_path):
    import threading

    entered = threading.Event()
    release = threading.Event()

    def loader(path: pathlib.Path, max_bytes: int) -> frozenset[Address]:
        data = path.read_text()
        if data.startswith("10.0.0.0 8080"):  # the first version: slow
            entered.set()
            release.wait(10)
        return load_endpoints_file(path, max_bytes)

    namer = build(tmp_path, loader)
    write(namer.root, "svc", "10.9.9.9 80\n")
    await namer.start()
    try:
        seen: list[Addr] = []
        addr_of(namer, "svc").subscribe(seen.append, replay=False)
        write(namer.root, "svc", big_file(2000))  # v1: large, slow
        namer.scan()
        await wait_until(entered.is_set, timeout=5, message="the load to start")
        write(namer.root, "svc", "10.1.1.1 80\n")  # v2: small, applied during the scan
        namer.scan()
        assert seen == [Bound(frozenset({Address("10.1.1.1", 80)}))]
        release.set()
        await namer.settled()  # v1's load ends last, and is dropped
        assert seen == [Bound(frozenset({Address("10.1.1.1", 80)}))]
        assert addr_of(namer, "svc").get() == Bound(frozenset({Address("10.1.1.1", 80)}))
        assert namer.errors == 0
    finally:
        release.set()
        await namer.close()


async def test_out_of_file_descriptors_is_not_a_bad_file_and_the_next_scan_retries(tmp_path, caplog):
    exhausted = True

    def loader(path: pathlib.Path, max_bytes: int) -> frozenset[Address]:
        if exhausted:
            raise OSError(errno.EMFILE, "Too many open files", str(path))
        return load_endpoints_file(path, max_bytes)

    namer = build(tmp_path, loader)
    write(namer.root, "svc", "10.0.0.1 80\n")
    exhausted = False
    await namer.start()
    try:
        exhausted = True
        write(namer.root, "svc", "10.0.0.2 80\n")
        write(namer.root, "new", "10.0.0.3 80\n")
        namer.scan()
        namer.scan()
        assert namer.errors == 0
        assert addr_of(namer, "svc").get() == Bound(frozenset({Address("10.0.0.1", 80)}))  # kept
        assert isinstance(addr_of(namer, "new").get(), Pending)  # known to exist, not failed
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "out of file descriptors" in warnings[0]
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        exhausted = False
        namer.scan()  # retried although the files did not change since
        assert addr_of(namer, "svc").get() == Bound(frozenset({Address("10.0.0.2", 80)}))
        assert addr_of(namer, "new").get() == Bound(frozenset({Address("10.0.0.3", 80)}))
    finally:
        await namer.close()


def test_max_file_bytes_is_a_config_key():
    assert FsNamerConfig(root_dir="d").max_file_bytes == 1024 * 1024


# -- freshness (meshd_discovery_last_update_age_seconds, meshd_discovery_stale) -----------------------


def test_freshness_is_the_last_scan_and_a_broken_file_is_stale_from_its_failure(tmp_path: pathlib.Path):
    from tests.support.clock import FakeClock

    clock = FakeClock(start=100.0)
    (tmp_path / "disco").mkdir()
    namer = FsNamer(FsNamerConfig(root_dir="disco"), Runtime(base_dir=tmp_path, clock=clock))
    write(namer.root, "accounts", "10.0.0.1 80\n")
    write(namer.root, "ledger", "10.0.0.2 80\n")
    namer.scan()
    assert [(f.name, f.confirmed_at, f.stale) for f in namer.freshness()] == [
        ("accounts", 100.0, False), ("ledger", 100.0, False),
    ]
    clock.advance(5.0)
    write(namer.root, "ledger", "not an endpoint\n")
    namer.scan()  # ledger fails to parse at 105: its last good contents keep serving
    assert [(f.name, f.confirmed_at, f.stale) for f in namer.freshness()] == [
        ("accounts", 105.0, False), ("ledger", 105.0, True),
    ]
    clock.advance(5.0)
    namer.scan()  # unchanged: still broken since 105
    assert [(f.name, f.confirmed_at, f.stale) for f in namer.freshness()] == [
        ("accounts", 110.0, False), ("ledger", 105.0, True),
    ]
    write(namer.root, "ledger", "10.0.0.3 80\n")
    namer.scan()
    assert [(f.name, f.confirmed_at, f.stale) for f in namer.freshness()] == [
        ("accounts", 110.0, False), ("ledger", 110.0, False),
    ]
    write(namer.root, "fresh-but-broken", "garbage\n")
    namer.scan()  # never loaded: failing, but nothing old is served, so not stale
    assert ("fresh-but-broken", 110.0, False) in [(f.name, f.confirmed_at, f.stale) for f in namer.freshness()]


# -- scans that skip listing an unchanged directory; the poll as a timer ------------------------------


def _settle(path: pathlib.Path, seconds_ago: float = 60.0) -> None:
    """Date the directory's mtime back, as if nothing had changed in it for a while."""
    stamp = path.stat()
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns - int(seconds_ago * 1e9)))


class _CountingScandir:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.scandir

        def counting(path: object) -> object:
            self.calls += 1
            return real(path)  # type: ignore[call-overload]

        monkeypatch.setattr("meshd.discovery.fs.os.scandir", counting)


def _addresses(namer: FsNamer, name: str) -> Addr:
    return namer.addr(namer.prefix.concat(Path((name,)))).get()


def test_an_unchanged_settled_directory_is_not_listed_again_and_edits_are_still_seen(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "disco").mkdir()
    namer = FsNamer(FsNamerConfig(root_dir="disco"), Runtime(base_dir=tmp_path))
    (namer.root / "accounts").write_text("10.0.0.1 80\n")
    _settle(namer.root)
    listings = _CountingScandir(monkeypatch)
    namer.scan()
    namer.scan()
    namer.scan()
    assert listings.calls == 1  # the first scan lists; the others stat the directory and the file
    assert _addresses(namer, "accounts") == Bound(frozenset({Address("10.0.0.1", 80)}))
    # an edit in place (same inode, the directory untouched) is seen by the file's stat, and that
    # scan lists the directory again and reloads the file
    (namer.root / "accounts").write_text("10.0.0.1 80\n10.0.0.2 80\n")
    namer.scan()
    assert listings.calls == 2
    assert _addresses(namer, "accounts") == Bound(frozenset({Address("10.0.0.1", 80), Address("10.0.0.2", 80)}))
    namer.scan()
    assert listings.calls == 2  # the directory is still settled: back to stat only
    # a new file changes the directory's mtime: listed again
    (namer.root / "ledger").write_text("10.0.0.3 80\n")
    namer.scan()
    assert listings.calls == 3
    assert namer.lookup(Path(("ledger",))) != NEG
    # a removed file fails its stat: listed again, and the name goes negative
    _settle(namer.root)
    namer.scan()
    calls = listings.calls
    namer.scan()
    assert listings.calls == calls
    (namer.root / "ledger").unlink()
    _settle(namer.root)  # even with the directory's mtime put back, the missing file is noticed
    namer.scan()
    assert listings.calls == calls + 1
    assert namer.lookup(Path(("ledger",))) == NEG


def test_a_directory_changed_within_the_last_seconds_is_listed_every_scan(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timestamps are coarse: a file added in the same tick as the last listing leaves the
    directory's mtime as it was. Such a recent listing is never trusted."""
    (tmp_path / "disco").mkdir()
    namer = FsNamer(FsNamerConfig(root_dir="disco"), Runtime(base_dir=tmp_path))
    (namer.root / "accounts").write_text("10.0.0.1 80\n")
    recent = namer.root.stat()
    listings = _CountingScandir(monkeypatch)
    namer.scan()
    (namer.root / "ledger").write_text("10.0.0.3 80\n")
    os.utime(namer.root, ns=(recent.st_atime_ns, recent.st_mtime_ns))  # the same mtime as listed
    namer.scan()
    assert listings.calls == 2
    assert namer.lookup(Path(("ledger",))) != NEG


def test_an_entry_that_is_not_a_file_keeps_every_scan_listing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dangling symlink becomes a file when its target appears, without its directory changing."""
    (tmp_path / "disco").mkdir()
    (tmp_path / "elsewhere").mkdir()
    namer = FsNamer(FsNamerConfig(root_dir="disco"), Runtime(base_dir=tmp_path))
    (namer.root / "accounts").symlink_to(tmp_path / "elsewhere" / "accounts")
    _settle(namer.root)
    listings = _CountingScandir(monkeypatch)
    namer.scan()
    assert namer.lookup(Path(("accounts",))) == NEG
    (tmp_path / "elsewhere" / "accounts").write_text("10.0.0.1 80\n")
    namer.scan()
    assert listings.calls == 2
    assert _addresses(namer, "accounts") == Bound(frozenset({Address("10.0.0.1", 80)}))


async def test_the_poll_is_a_timer_on_the_clock_and_stops_when_closed(tmp_path: pathlib.Path) -> None:
    from tests.support.clock import FakeClock

    clock = FakeClock(start=100.0)
    (tmp_path / "disco").mkdir()
    namer = FsNamer(FsNamerConfig(root_dir="disco", poll_interval_ms=250), Runtime(base_dir=tmp_path, clock=clock))
    await namer.start()
    assert namer.scans == 1
    write(namer.root, "accounts", "10.0.0.1 80\n")
    clock.advance(0.249)
    assert namer.scans == 1
    clock.advance(0.001)
    assert namer.scans == 2 and namer.lookup(Path(("accounts",))) != NEG
    clock.advance(1.0)
    assert namer.scans == 6
    assert clock.slept == []  # no coroutine sleeps between scans
    await namer.close()
    clock.advance(10.0)
    assert namer.scans == 6
