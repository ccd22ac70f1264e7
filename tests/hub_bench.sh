#!/bin/sh
# hub_bench.sh - hf-fetch download throughput from the loopback test hub,
# single stream and chunked, against `curl -o` of the same CDN URL.
#   LQ_ROOT=. LQ_BIN=build/bin sh tests/hub_bench.sh [SIZE_MB (default 2048)]
# Prints one line per method: seconds and MB/s (MB = 10^6 bytes).  hf-fetch's
# time includes its SHA-256 verification and the fdatasync before the blob is
# renamed into place; plain `curl -o` has neither, so a `curl -o; sync` line
# is printed too.  "cpu" is user + system time of the client (the machine
# may be shared, so wall times are noisy).
: "${LQ_ROOT:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${LQ_BIN:=$LQ_ROOT/build/bin}"
. "$LQ_ROOT/tests/hub_lib.sh"
MB=${1:-2048}
F="$LQ_BIN/hf-fetch"
T=$(mktemp -d "${TMPDIR:-/tmp}/hf-fetch-bench.XXXXXX")
trap 'hub_stop; rm -rf "$T"' EXIT
trap 'exit 1' INT TERM
mkdir -p "$T/repos/models/bench/big/main"
echo '{}' >"$T/repos/models/bench/big/repo.json"
head -c $((MB * 1024 * 1024)) /dev/urandom >"$T/repos/models/bench/big/main/model.safetensors"
BYTES=$((MB * 1024 * 1024))
hub_start "$T" || exit 1
# warm up: the server hashes the file once; the file is in the page cache
LOC=$(curl -sI "$HF_ENDPOINT/bench/big/resolve/main/model.safetensors" | tr -d '\r' |
	sed -n 's/^Location: //p')
[ -n "$LOC" ] || { echo "no CDN location"; exit 1; }

run() { # NAME CMD...
	_n=$1; shift
	sync
	if ! /usr/bin/time -f "%e %U %S" -o "$T/time" "$@" >/dev/null 2>&1; then
		echo "$_n: failed"
		return
	fi
	awk -v n="$_n" -v s="$BYTES" '{ printf "%-34s %7.2f s %8.1f MB/s   cpu %5.2f s\n", n, $1, s / $1 / 1e6, $2 + $3 }' "$T/time"
}

echo "file: $MB MiB ($BYTES bytes), loopback, $(nproc) CPUs"
run "curl -o" curl -sf -o "$T/curl.out" "$LOC"
rm -f "$T/curl.out"
run "curl -o, then sync (as hf-fetch)" sh -c 'curl -sf -o "$1" "$2" && sync "$1"' sh "$T/curl.out" "$LOC"
rm -f "$T/curl.out"
run "hf-fetch single stream (-c 1)" "$F" -q --cache-dir "$T/c1" -c 1 bench/big
rm -rf "$T/c1"
run "hf-fetch chunked (-c 4, 16M)" "$F" -q --cache-dir "$T/c2" -c 4 bench/big
rm -rf "$T/c2"
run "hf-fetch chunked (-c 8, 64M)" "$F" -q --cache-dir "$T/c3" -c 8 --chunk-size 64M bench/big
rm -rf "$T/c3"
