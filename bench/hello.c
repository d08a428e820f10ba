/* The workload of bench/wasm.sh, built twice from this one source: a static
 * Linux binary and a WASI preview1 module. Prints its arguments and its
 * environment, one per line, and exits.
 *   gcc -static -O2 -s -o hello hello.c
 *   clang --target=wasm32-wasi -O2 -Wl,--strip-all -o hello.wasm hello.c */
#include <stdio.h>

extern char **environ;

int main(int argc, char **argv) {
	for (int i = 0; i < argc; i++)
		puts(argv[i]);
	for (char **e = environ; *e; e++)
		puts(*e);
	return 0;
}
