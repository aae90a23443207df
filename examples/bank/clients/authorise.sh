#!/bin/sh
# Make one card authorisation through meshd with nothing but curl: joining the mesh takes only HTTP.
#
# usage: authorise.sh ACCOUNT_ID AMOUNT_IN_CENTS [MERCHANT_ID] [AUTH_ID]
#   MESHD  the local meshd's outgoing router (default http://127.0.0.1:4140)
#
# The request goes to meshd, not to a payments replica: the Host header names the service and meshd picks the
# replica. Sending the same AUTH_ID again is safe: payments answers the recorded decision and moves no money.
# Prints the JSON answer. Exit status 0 when payments decided (approved or declined), 22 when it answered
# an error (e.g. 503 "failed"), another curl code when nothing answered, 64 for bad arguments.
set -eu

usage() {
    echo "usage: $0 ACCOUNT_ID AMOUNT_IN_CENTS [MERCHANT_ID] [AUTH_ID]" >&2
    exit 64
}

[ $# -ge 2 ] || usage
account=$1
amount=$2
merchant=${3:-m-001}
auth_id=${4:-sh-$(date +%s)-$$}
meshd=${MESHD:-http://127.0.0.1:4140}

# Ids go into JSON unquoted by any tool, so accept only characters that need no escaping.
for id in "$account" "$merchant" "$auth_id"; do
    case $id in
        '' | *[!A-Za-z0-9._:-]*) echo "ids may contain only letters, digits and . _ : -, got '$id'" >&2; exit 64 ;;
    esac
done
case $amount in
    '' | *[!0-9]*) echo "amount must be a whole number of cents, got '$amount'" >&2; exit 64 ;;
esac

body=$(printf '{"auth_id":"%s","account_id":"%s","merchant_id":"%s","amount":%s}' \
    "$auth_id" "$account" "$merchant" "$amount")

curl --silent --show-error --fail-with-body --max-time 5 \
    -H 'Host: payments' \
    -H 'Content-Type: application/json' \
    --data "$body" \
    "$meshd/authorisations"
echo
