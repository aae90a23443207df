#!/bin/sh
# Post one ledger transaction with the gRPC call bank.Ledger/Post, from the shell, with nghttp (nghttp2's C
# HTTP/2 client, Debian nghttp2-client): a gRPC client written in neither Python nor with a gRPC library.
#
# usage: ledger_post.sh KEY DEBIT_ACCOUNT CREDIT_ACCOUNT AMOUNT_IN_CENTS
#   GRPC_TARGET  host:port of meshd's HTTP/2 router (protocol: h2), or of a ledger replica's --grpc-port
#                (default 127.0.0.1:4142)
#
# On the wire a unary gRPC call is a POST to /<service>/<method> with content-type application/grpc and
# te: trailers, whose body is one message behind a 5-byte prefix (a 0 flag byte and the length, 4 bytes
# big-endian); the answer's message has the same prefix and the outcome is the grpc-status trailer. The
# ledger's messages are JSON (examples/bank/ledger_grpc.py). Posting is idempotent under KEY: sending the same
# KEY and legs again answers the recorded transaction ("replayed") and moves no money.
#
# Prints the answer's JSON. Exit status: the grpc-status (0 OK, 6 ALREADY_EXISTS for KEY used with other
# legs, 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED, ...), 64 for bad arguments, 69 when no gRPC answer came.
set -eu

usage() {
    echo "usage: $0 KEY DEBIT_ACCOUNT CREDIT_ACCOUNT AMOUNT_IN_CENTS" >&2
    exit 64
}

[ $# -eq 4 ] || usage
key=$1
debit=$2
credit=$3
amount=$4
target=${GRPC_TARGET:-127.0.0.1:4142}

# Values go into JSON unquoted by any tool, so accept only characters that need no escaping.
for id in "$key" "$debit" "$credit"; do
    case $id in
        '' | *[!A-Za-z0-9._:-]*) echo "keys and accounts may contain only letters, digits and . _ : -, got '$id'" >&2; exit 64 ;;
    esac
done
case $amount in
    '' | *[!0-9]*) echo "amount must be a whole number of cents, got '$amount'" >&2; exit 64 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

message=$(printf '{"key":"%s","legs":[{"account":"%s","direction":"debit","amount":%s},{"account":"%s","direction":"credit","amount":%s}]}' \
    "$key" "$debit" "$amount" "$credit" "$amount")
length=${#message}  # ASCII only (checked above): characters are bytes
octal() { printf '%03o' "$1"; }
# shellcheck disable=SC2059  # the format is built from octal escapes on purpose
printf "\\000\\$(octal $((length >> 24 & 255)))\\$(octal $((length >> 16 & 255)))\\$(octal $((length >> 8 & 255)))\\$(octal $((length & 255)))%s" \
    "$message" > "$work/request"

# -v prints the frames, trailers included, with the body's bytes where they arrive (just before the log line
# of the DATA frame that carried them).
if ! (cd "$work" && nghttp -v -t 10 -d request \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://$target/bank.Ledger/Post" > frames 2>&1); then
    echo "no answer from $target:" >&2
    tail -n 3 "$work/frames" >&2
    exit 69
fi
status=$(sed -n 's/^.*recv (stream_id=[0-9]*) grpc-status: \([0-9]*\).*$/\1/p' "$work/frames" | tail -n 1)
message_text=$(sed -n 's/^.*recv (stream_id=[0-9]*) grpc-message: //p' "$work/frames" | tail -n 1)
if [ -z "$status" ]; then
    echo "no grpc-status in the answer from $target" >&2
    exit 69
fi
# the answer's message (one JSON object, after its 5-byte prefix), when the call returned one
LC_ALL=C sed -n 's/^.*\({"key".*}\)\[ *[0-9.]*\] recv DATA frame.*$/\1/p' "$work/frames" | head -n 1
if [ "$status" != 0 ]; then
    echo "grpc-status $status: $message_text" >&2
fi
exit "$status"
