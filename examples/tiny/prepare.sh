#!/bin/sh
# SPDX-License-Identifier: MIT
# Copyright (c) the libquant authors
#
# prepare.sh [TRAIN_DIR] - the corpus of the tiny model: the King James Bible
# (public domain) dumped with the `bible` program of Debian's bible-kjv
# package (apt-get install bible-kjv), normalized to one chapter a paragraph:
#
#   Genesis 1
#   In the beginning God created the heaven and the earth.
#   And the earth was without form, ...
#   <blank line>
#
# (verse numbers dropped, one verse a line, single spaces, ASCII).  Every
# 100th chapter (the 50th, 150th, ... of the 1189) is held out for
# validation and written to examples/tiny/heldout.txt (committed); all other
# chapters go to TRAIN_DIR/train.txt (default .device/tiny, not committed:
# rerun this script to make it).  Deterministic: same package, same bytes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
train_dir=${1:-$root/.device/tiny}
command -v bible >/dev/null 2>&1 || {
	echo "prepare.sh: the 'bible' program is missing (apt-get install bible-kjv)" >&2
	exit 1
}
mkdir -p "$train_dir"
tmp_train="$train_dir/train.txt.tmp"
tmp_held="$here/heldout.txt.tmp"
# removed on failure and on ^C / TERM too (further signals ignored during the clean-up)
trap 'trap "" HUP INT TERM; rm -f "$tmp_train" "$tmp_held"' EXIT
trap 'exit 130' HUP INT TERM
# -l: no line wrapping (pretty mode otherwise wraps at 79 columns)
LC_ALL=C bible -l 1000000 Gen1:1-Rev22:21 | LC_ALL=C awk -v train="$tmp_train" -v held="$tmp_held" '
function flush() {
	if (chap == "") return
	out = (nchap % 100 == 50) ? held : train
	printf "%s\n%s\n", chap, body > out
	body = ""
}
{ sub(/[ \t\r]+$/, "") }
/^$/ { next }
/^ +[0-9]+ / {
	sub(/^ +[0-9]+ +/, "")
	gsub(/[ \t]+/, " ")
	body = body $0 "\n"
	next
}
{ flush(); nchap++; chap = $0 }
END {
	flush()
	if (nchap != 1189) { printf "prepare.sh: %d chapters, expected 1189\n", nchap > "/dev/stderr"; exit 1 }
}'
mv "$tmp_train" "$train_dir/train.txt"
mv "$tmp_held" "$here/heldout.txt"
trap - EXIT HUP INT TERM
wc -c "$train_dir/train.txt" "$here/heldout.txt" >&2
