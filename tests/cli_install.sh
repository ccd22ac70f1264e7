#!/bin/sh
# cli_install.sh - make install into a DESTDIR, then build a program against
# the installed header and library with pkg-config, as a user would.
. "${LQ_ROOT:-.}/tests/lib.sh"
D="$TMP/root"
# same configuration as the build directory (CUDA as detected), so nothing is rebuilt
check "make install" make -s -C "$LQ_ROOT" BUILD="${LQ_BUILD#$LQ_ROOT/}" install PREFIX=/usr DESTDIR="$D"
for f in usr/bin/quantize usr/bin/inspect usr/lib/libquant.a usr/lib/libquant.so usr/include/libquant.h \
	usr/lib/pkgconfig/libquant.pc usr/share/man/man1/quantize.1 usr/share/man/man1/inspect.1 \
	usr/share/man/man5/lq.5 usr/share/man/man3/libquant.3; do
	[ -e "$D/$f" ] && ok || bad "not installed: $f"
done
cat > "$TMP/prog.c" <<'C'
#include <libquant.h>
#include <stdio.h>
int main(void) { printf("%s %s\n", lq_version(), lq_qtype_name(LQ_QTYPE_NF4)); return 0; }
C
if command -v pkg-config >/dev/null; then
	flags=$(PKG_CONFIG_PATH="$D/usr/lib/pkgconfig" pkg-config --define-variable=prefix="$D/usr" --cflags --libs libquant)
	check "compile against the installed library" ${CC:-cc} -std=c11 -Wall -Werror "$TMP/prog.c" -o "$TMP/prog" $flags -Wl,-rpath,"$D/usr/lib"
	check "run it" "$TMP/prog"
	has "prog output" "^0\.1\.0 nf4$" "$TMP/out"
fi
has "prefix recorded" "^prefix=/usr$" "$D/usr/lib/pkgconfig/libquant.pc"
check "installed man page renders" sh -c "MANPATH='$D/usr/share/man' man -P cat quantize | grep -q 'EXIT STATUS'"
check "uninstall" make -s -C "$LQ_ROOT" BUILD="${LQ_BUILD#$LQ_ROOT/}" uninstall PREFIX=/usr DESTDIR="$D"
[ ! -e "$D/usr/bin/quantize" ] && ok || bad "uninstall left quantize"
finish
