#!/bin/sh
# cli_layering.sh - the dependency rules of docs/architecture.md, checked:
# tools use only the public header; the library never prints, exits or
# reads the environment; gpu/ does not reach into the library's internals.
. "${LQ_ROOT:-.}/tests/lib.sh"
cd "$LQ_ROOT" || exit 1
for f in tools/*.c; do
	inc=$(grep -E '^#include "' "$f" | grep -vE '"(libquant\.h|toolutil\.h)"')
	[ -z "$inc" ] && ok || bad "$f includes a private header: $inc"
done
for f in libquant/*.c formats/*.c; do
	hits=$(sed -e 's://.*$::' "$f" | grep -nE '\b(printf|fprintf|puts|fputs|perror|exit|abort|getenv|secure_getenv)[[:space:]]*\(' |
		grep -vE 'snprintf|vsnprintf|_exit_|json_' )
	[ -z "$hits" ] && ok || bad "$f prints, exits or reads the environment: $hits"
done
for f in gpu/*.cu gpu/*.h; do
	[ -f "$f" ] || continue
	inc=$(grep -E '^#include "' "$f" | grep -vE '"(libquant\.h|lq_blocks\.h|lq_cuda\.h)"')
	# the GPU tests and benchmarks may share the tests' case lists and bench
	# data (sample_cases.h), which use only the public header (checked below)
	case $f in gpu/test_*.cu | gpu/bench_*.cu) inc=$(printf '%s\n' "$inc" | grep -vE '"\.\./tests/sample_cases\.h"') ;; esac
	[ -z "$inc" ] && ok || bad "$f includes a private header: $inc"
done
inc=$(grep -E '^#include "' tests/sample_cases.h | grep -vE '"libquant\.h"')
[ -z "$inc" ] && ok || bad "tests/sample_cases.h includes more than the public header: $inc"
finish
