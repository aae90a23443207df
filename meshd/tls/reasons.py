"""Why a TLS handshake failed, as a short metric label and a sentence a person can act on.

OpenSSL reports a failure as an `ssl.SSLError` whose `reason` is a code such as
`CERTIFICATE_VERIFY_FAILED` or `TLSV1_ALERT_UNKNOWN_CA` (an alert the peer sent); a failed
verification is an `ssl.SSLCertVerificationError` carrying X.509's `verify_code`. `classify`
folds both into the few reasons an operator can act on; every reason is listed in `REASONS`
and documented in docs/tls.md and docs/metrics.md.
"""

from __future__ import annotations

import ssl
from typing import Final

#: reason label -> what it means (the `l5d-err` of an upstream failure starts with the meaning)
REASONS: Final[dict[str, str]] = {
    "unknown_ca": "the certificate is not signed by a trusted CA",
    "name_mismatch": "the certificate does not name the server that was dialled",
    "expired": "the certificate has expired (or is not valid yet)",
    "no_client_cert": "no client certificate was presented and the server requires one",
    "bad_certificate": "the certificate was refused (wrong key usage or purpose, or malformed)",
    "protocol_version": "no TLS version in common (meshd speaks TLS 1.2 and 1.3 only)",
    "no_shared_cipher": "no cipher suite in common",
    "plaintext": "plaintext HTTP was sent to a TLS port",
    "not_tls": "the peer did not answer in TLS (a plaintext port?)",
    "timeout": "the handshake did not finish within the handshake timeout",
    "closed": "the peer closed the connection in the middle of the handshake",
    "tls_on_plaintext_port": "a TLS handshake was sent to a plaintext port",
    "other": "the handshake failed",
}

# X.509 verify codes (openssl/x509_vfy.h)
_EXPIRED: Final = frozenset({9, 10})  # not yet valid, has expired
_UNKNOWN_CA: Final = frozenset({2, 18, 19, 20, 21, 27})
_NAME: Final = frozenset({62, 63, 64})  # hostname, email, IP address mismatch
_PURPOSE: Final = frozenset({26, 28, 32})  # unsuitable purpose, rejected, key usage cannot sign

_BY_CODE: Final[dict[str, str]] = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_client_cert",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "other",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "bad_certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "bad_certificate",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": "no_shared_cipher",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_CIPHERS_AVAILABLE": "no_shared_cipher",
    "HTTP_REQUEST": "plaintext",
    "WRONG_VERSION_NUMBER": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "RECORD_LENGTH_MISMATCH": "not_tls",
}


def classify(exc: BaseException) -> str:
    """The reason label for a handshake (or post-handshake alert) failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _EXPIRED:
            return "expired"
        if code in _UNKNOWN_CA:
            return "unknown_ca"
        if code in _NAME:
            return "name_mismatch"
        if code in _PURPOSE:
            return "bad_certificate"
        return "bad_certificate"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)
        if isinstance(reason, str):
            return _BY_CODE.get(reason, "other")
        return "other"
    if isinstance(exc, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError):
        return "closed"
    return "other"


def describe(exc: BaseException) -> str:
    """`<meaning> (<OpenSSL's own words>)`, for `l5d-err` and log lines."""
    reason = classify(exc)
    detail = ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = str(exc.verify_message)
    elif isinstance(exc, ssl.SSLError):
        detail = str(getattr(exc, "reason", "") or exc)
    else:
        detail = str(exc) or type(exc).__name__
    return f"{REASONS[reason]} ({detail.lower().replace('_', ' ')})" if detail else REASONS[reason]
