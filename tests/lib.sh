# lib.sh - helpers for the shell tests: counters, expectations, a temp dir.
# Usage: . "$LQ_ROOT/tests/lib.sh"; ...; finish
: "${LQ_ROOT:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${LQ_BIN:=$LQ_ROOT/build/bin}"
: "${LQ_BUILD:=$LQ_ROOT/build}"
PATH="$LQ_BIN:$PATH"
export PATH
T_PASS=0 T_FAIL=0
TMP=$(mktemp -d "${TMPDIR:-/tmp}/lqtest.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
ok() { T_PASS=$((T_PASS + 1)); }
bad() { T_FAIL=$((T_FAIL + 1)); echo "FAIL: $*" >&2; }
# check DESC CMD... : command must succeed
check() { _d=$1; shift; if "$@" >"$TMP/out" 2>"$TMP/err"; then ok; else bad "$_d (exit $?)"; sed 's/^/  | /' "$TMP/err" | head -5 >&2; fi; }
# fails DESC STATUS PATTERN CMD... : command must exit STATUS with stderr matching PATTERN (grep -E)
fails() {
	_d=$1 _want=$2 _pat=$3; shift 3
	"$@" >"$TMP/out" 2>"$TMP/err"; _rc=$?
	if [ "$_rc" -ne "$_want" ]; then bad "$_d: exit $_rc, wanted $_want"; sed 's/^/  | /' "$TMP/err" | head -5 >&2
	elif ! grep -Eq -- "$_pat" "$TMP/err"; then bad "$_d: stderr does not match '$_pat'"; sed 's/^/  | /' "$TMP/err" | head -5 >&2
	elif [ "$(wc -l <"$TMP/err")" -gt 3 ]; then bad "$_d: more than a short error"; sed 's/^/  | /' "$TMP/err" | head -5 >&2
	else ok; fi
}
# same DESC A B : files identical
same() { if cmp -s "$2" "$3"; then ok; else bad "$1: $2 and $3 differ"; fi; }
# has DESC PATTERN FILE
has() { if grep -Eq -- "$2" "$3"; then ok; else bad "$1: '$2' not in $3"; head -5 "$3" | sed 's/^/  | /' >&2; fi; }
# no_file DESC PATH...
absent() { _d=$1; shift; for _f in "$@"; do if [ -e "$_f" ]; then bad "$_d: $_f exists"; return; fi; done; ok; }
have_py() { python3 -c "import $1" 2>/dev/null; }
# tally DESC OUT ERR : count a checker's "ok ..." / "FAIL ..." lines in OUT
# (none at all fails); on failure show them and ERR's tail
tally() {
	_p=$(grep -c '^ok ' "$2") _f=$(grep -c '^FAIL ' "$2")
	T_PASS=$((T_PASS + _p))
	if [ "$_f" -gt 0 ] || [ "$_p" -eq 0 ]; then
		T_FAIL=$((T_FAIL + _f + (_p == 0)))
		grep '^FAIL' "$2" >&2
		tail -3 "$3" >&2
	fi
	echo "$1: $_p ok, $_f failed"
}
# peer_check DESC SCRIPT NAME PKG... : run tests/SCRIPT check against the
# built tools in $TMP/NAME and tally it, when python has every PKG (a live
# comparison with a real peer); else say which package is missing
peer_check() {
	_d=$1 _s=$2 _n=$3
	shift 3
	for _m in "$@"; do
		if ! have_py "$_m"; then
			echo "skipping the $_d: python package $_m missing (needs $*)"
			return
		fi
	done
	mkdir -p "$TMP/$_n"
	python3 "$LQ_ROOT/tests/$_s" check "$LQ_BIN" "$TMP/$_n" >"$TMP/$_n.out" 2>"$TMP/$_n.err"
	tally "$_d" "$TMP/$_n.out" "$TMP/$_n.err"
}
finish() { echo "$T_PASS passed, $T_FAIL failed"; [ "$T_FAIL" -eq 0 ]; }
