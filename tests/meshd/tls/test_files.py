"""TlsFiles: a changed set of TLS files is used only if it works; the last good one serves otherwise."""

from __future__ import annotations

import pathlib
import shutil
import ssl

import pytest

from meshd.tls.certs import not_after
from meshd.tls.contexts import TlsFiles, TlsSide, server_context
from meshd.tls.reasons import REASONS, classify, describe
from meshd.tls.stats import TlsStats
from tests.support.tls import Pair, Pki


def files_for(pair: Pair, directory: pathlib.Path, stats: TlsStats) -> tuple[TlsFiles, pathlib.Path, pathlib.Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    shutil.copy(pair.cert, cert)
    shutil.copy(pair.key, key)
    return TlsFiles({"certPath": cert, "keyPath": key}, lambda: server_context(cert, key, None, False), stats), cert, key


def test_a_changed_usable_pair_replaces_the_context_and_its_expiry(tmp_path: pathlib.Path) -> None:
    pki = Pki(tmp_path / "pki")
    stats = TlsStats()
    files, cert, key = files_for(pki.issue("v1"), tmp_path, stats)
    first = files.current
    assert files.poll() is False and files.current is first  # nothing changed: nothing read again
    v2 = pki.issue("v2", dns=("v2",))
    shutil.copy(v2.cert, cert)
    shutil.copy(v2.key, key)
    assert files.poll() is True and files.current is not first
    assert stats.reloads[(str(cert), "success")] == 1
    assert stats.expiry[str(cert)] == not_after(v2.cert.read_bytes())


@pytest.mark.parametrize("broken", ["mismatched-key", "expired", "half-written", "missing"])
def test_a_broken_new_set_is_refused_and_the_last_good_one_keeps_serving(tmp_path: pathlib.Path, broken: str) -> None:
    pki = Pki(tmp_path / "pki")
    stats = TlsStats()
    v1 = pki.issue("v1")
    files, cert, key = files_for(v1, tmp_path, stats)
    good = files.current
    if broken == "mismatched-key":
        shutil.copy(pki.issue("other").key, key)
    elif broken == "expired":
        old = pki.issue("old", expired=True)
        shutil.copy(old.cert, cert)
        shutil.copy(old.key, key)
    elif broken == "half-written":
        cert.write_bytes(v1.cert.read_bytes()[:100])
    else:
        cert.unlink()
    assert files.poll() is False
    assert files.current is good and files.last_error
    assert stats.reloads[(str(cert), "error")] == 1
    assert files.poll() is False and stats.reloads[(str(cert), "error")] == 1  # the same bytes: once
    # the files put right: taken up at the next poll
    shutil.copy(v1.cert, cert)
    shutil.copy(v1.key, key)
    assert files.poll() is True and files.last_error is None


def test_a_client_side_offers_no_session_of_a_rotated_context(tmp_path: pathlib.Path) -> None:
    pki = Pki(tmp_path / "pki")
    stats = TlsStats()
    files, cert, key = files_for(pki.issue("v1"), tmp_path, stats)
    side = TlsSide(files, stats, server=False, router="r", client="c")
    side._session_ctx = files.current
    side._sessions["svc"] = object()  # type: ignore[assignment]  # (a stand-in: only its presence counts)
    assert side._session_for(files.current, "svc") is not None
    v2 = pki.issue("v2")
    shutil.copy(v2.cert, cert)
    shutil.copy(v2.key, key)
    assert files.poll()
    assert side._session_for(files.current, "svc") is None


def test_every_reason_has_a_meaning_and_failures_are_described() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = 10
    exc.verify_message = "certificate has expired"
    assert classify(exc) == "expired"
    assert describe(exc) == f"{REASONS['expired']} (certificate has expired)"
    assert classify(ConnectionResetError()) == "closed"
    assert classify(ValueError()) == "other"
