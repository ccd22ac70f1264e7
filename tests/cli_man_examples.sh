#!/bin/sh
# cli_man_examples.sh - run the EXAMPLES of the man pages (shell lines that
# start with "$ ", or a C program for section 3) against a small generated
# checkpoint named "model", and check that the pages render without warnings.
. "${LQ_ROOT:-.}/tests/lib.sh"
PAGES="quantize.1 inspect.1 lq.5 libquant.3"
# roff escapes used in the examples -> text
unroff() { sed -e 's/\\-/-/g' -e 's/\\e/\\/g' -e 's/\\(aq/'"'"'/g' -e 's/\\\\/\\/g'; }
examples() { # page -> the EXAMPLES section's .EX blocks, separated by a line "@@"
	awk '/^\.SH /{ex = ($2 == "EXAMPLES")} ex && /^\.EX/{inb=1; next} ex && /^\.EE/{inb=0; print "@@"; next} ex && inb' "$1" | unroff
}
for page in $PAGES; do
	src="$LQ_ROOT/man/$page"
	[ -f "$src" ] || { bad "$page missing"; continue; }
	secs="NAME SYNOPSIS EXAMPLES"
	case "$page" in *.1) secs="$secs OPTIONS EXIT_STATUS" ;; *.3) secs="$secs RETURN_VALUE" ;; esac
	for sec in $secs; do
		grep -q "^\.SH $(echo "$sec" | tr _ ' ')" "$src" && ok || bad "$page: no $sec section"
	done
	if command -v groff >/dev/null; then
		w=$(groff -t -man -ww -z "$src" 2>&1)
		[ -z "$w" ] && ok || bad "$page renders with warnings: $w"
	fi
	dir="$TMP/$page"
	mkdir -p "$dir" && cd "$dir" || exit 1
	"$LQ_BUILD/tests/gen_checkpoint" model >/dev/null
	n=0
	examples "$src" > ex.all
	# C program blocks (no "$ " lines) are compiled against the library and run
	awk 'BEGIN{b=0} /^@@$/{b++; next} {print > ("ex." b)}' ex.all
	for blk in ex.[0-9]*; do
		[ -f "$blk" ] || continue
		if grep -q '^\$ ' "$blk"; then
			while IFS= read -r line; do
				case "$line" in '$ '*) ;; *) continue ;; esac
				cmd=${line#\$ }
				n=$((n + 1))
				if sh -c "set -e; $cmd" >"$TMP/out" 2>"$TMP/err"; then ok; else
					bad "$page example failed: $cmd"; sed 's/^/  | /' "$TMP/err" | head -5 >&2
				fi
			done < "$blk"
		else
			n=$((n + 1))
			[ -f model-nf4.lq ] || quantize -q -o model-nf4.lq model
			cp "$blk" example.c
			if ${CC:-cc} -std=c11 -Wall -Wextra -Werror -I"$LQ_ROOT/libquant" example.c "$LQ_BUILD/libquant.a" \
				$(pkg-config --libs libcurl libcrypto libxxhash jansson libpcre2-8 libutf8proc 2>/dev/null) -lm -pthread \
				-o example 2>"$TMP/err" && ./example model-nf4.lq >"$TMP/out" 2>>"$TMP/err"; then ok; else
				bad "$page: C example failed"; sed 's/^/  | /' "$TMP/err" | head -8 >&2
			fi
		fi
	done
	[ "$n" -gt 0 ] && ok || bad "$page: no examples found"
	cd "$TMP" || exit 1
done
finish
