#!/usr/bin/env bash
# WebAssembly container start vs a Linux container, on cricket.
#
# Builds bench/hello.c twice: a static Linux binary (gcc -static) and a WASI
# preview1 module (Debian's clang + lld + wasi-libc), each the entrypoint of
# a one-layer image in a private docker-registry. Starts cricket with a
# `wasm` handler (private config, socket, state dirs), pulls both, runs a pod
# on the default handler and one on `wasm`, then ROUNDS times each of:
#   linux  the static binary, in the default handler's pod;
#   cold   the module of an image just pulled (removed and pulled again
#          first, untimed): the first start of the image, compiled by
#          Cranelift, with no compiled code cached and no program preloaded;
#   warm   the module again: its compiled code cached, and preloaded (its
#          monitor forked by the process that holds it, `[wasm] preloaded`);
# linux and warm in turn (the order swaps every round, so load drift hits
# both alike), then the cold runs on their own: the teardown of a process
# that compiled a module would weigh on whatever runs next.
# A run is `crictl create` + `crictl start` of a container with two args and
# one env var; the program prints them and exits 0, which is checked (exit
# code, and the log of the first run of each kind), then the container is
# removed, untimed. WARMUP untimed runs of each kind come first.
#
# Timing: the daemon's view is the rise of cricket's
# `cricket_grpc_request_duration_seconds_sum` for CreateContainer and
# StartContainer (its metrics endpoint, read before and after each run);
# StartContainer returns once the workload runs (execve done, or the module
# instantiated). Alongside, crictl's wall time minus its fixed cost (the
# median of a `crictl version` after every run, twice: two calls per run).
#
#   sudo bench/wasm.sh
#
# Environment:
#   ROUNDS=20         timed runs per kind
#   WARMUP=2          untimed runs per kind first
#   PAUSE=0.05        seconds of quiet before each run: the previous run's
#                     teardown (its processes and mounts going) is not timed
#   CRICKET_BIN=...   use this binary instead of `cargo build --release`
#   CRICKET_LOG=...   cricket's [log] level (default "info")
#   BENCH_TMP=/var/tmp  where the temp dir goes
#   KEEP=1            keep the temp dir (configs, logs)
#
# Exit status: 0 ok, 1 failure, 2 crictl missing.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf use '.' as decimal point

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-20}
WARMUP=${WARMUP:-2}
PAUSE=${PAUSE:-0.05}
CRICKET_LOG=${CRICKET_LOG:-info}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

KINDS=(linux cold warm)
PAIRED=(linux warm) # timed in turn; cold runs after them
METRICS=""       # cricket's metrics address
RUN_DIR=""       # cricket's run dir: short, see main
CACHE=""         # cricket's compile cache
declare -A IMG   # kind -> image
declare -A POD PODCFG # kind -> pod ID, pod config file
declare -A T_RUN D_RUN D_CREATE D_START # kind -> samples, microseconds
T_VER=""

# --- images -------------------------------------------------------------------------

# build_images PORT: the static binary and the module, one image each
build_images() {
	mkdir -p "$W/linux" "$W/wasm"
	gcc -static -O2 -s -o "$W/linux/hello" "$HERE/hello.c"
	clang --target=wasm32-wasi -O2 -Wl,--strip-all -o "$W/wasm/hello.wasm" "$HERE/hello.c"
	IMG[linux]=$(python3 "$HERE/mkimage.py" --registry "127.0.0.1:$1" --repo bench/hello-linux --tag 1 \
		--rootfs "$W/linux" --entrypoint /hello 2>>"$W/mkimage.log")
	IMG[cold]=$(python3 "$HERE/mkimage.py" --registry "127.0.0.1:$1" --repo bench/hello-wasm --tag 1 \
		--rootfs "$W/wasm" --entrypoint /hello.wasm 2>>"$W/mkimage.log")
	IMG[warm]=${IMG[cold]}
	log "static binary $(stat -c %s "$W/linux/hello") bytes, module $(stat -c %s "$W/wasm/hello.wasm") bytes"
}

# --- configs ------------------------------------------------------------------------

# ctr_config NAME IMAGE: the container config of a run, prints its path
ctr_config() {
	local f=$W/configs/ctr-$1.json
	cat >"$f" <<EOF2
{
  "metadata": { "name": "$1", "attempt": 0 },
  "image": { "image": "$2" },
  "args": ["one", "two"],
  "envs": [{ "key": "GREETING", "value": "hello" }],
  "log_path": "$1.log",
  "linux": {}
}
EOF2
	echo "$f"
}

# --- runs ---------------------------------------------------------------------------

# wait_exited ID: the exit code once the container has exited
wait_exited() {
	local deadline=$((SECONDS + 30)) out
	while :; do
		out=$(cri cricket inspect -o go-template --template '{{.status.state}} {{.status.exitCode}}' "$1")
		case $out in CONTAINER_EXITED*) echo "${out#* }" && return 0 ;; esac
		[ $SECONDS -lt $deadline ] || die "container $1 still not exited after 30 s ($out)"
		sleep 0.02
	done
}

# run_one KIND NAME TIMED: create + start, wait for the exit, check it, remove
run_one() {
	local kind=$1 name=$2 timed=$3 cfg id t0 code c0 s0 c1 s1
	cfg=$(ctr_config "$name" "${IMG[$kind]}")
	if [ "$kind" = cold ]; then
		cri cricket rmi "${IMG[cold]}" >/dev/null
		cri cricket pull "${IMG[cold]}" >/dev/null
	fi
	sleep "$PAUSE"
	read -r c0 s0 <<<"$(cricket_rpc_secs_each CreateContainer StartContainer)"
	t0=$EPOCHREALTIME
	id=$(cri cricket create --no-pull "${POD[$kind]}" "$cfg" "${PODCFG[$kind]}")
	cri cricket start "$id" >/dev/null
	if [ "$timed" = 1 ]; then
		T_RUN[$kind]+="$(us_since "$t0") "
		read -r c1 s1 <<<"$(cricket_rpc_secs_each CreateContainer StartContainer)"
		D_CREATE[$kind]+=$(awk -v a="$c1" -v b="$c0" 'BEGIN { printf "%d ", (a - b) * 1e6 }')
		D_START[$kind]+=$(awk -v a="$s1" -v b="$s0" 'BEGIN { printf "%d ", (a - b) * 1e6 }')
		D_RUN[$kind]+=$(awk -v a="$c1" -v b="$c0" -v c="$s1" -v d="$s0" 'BEGIN { printf "%d ", (a - b + c - d) * 1e6 }')
		t0=$EPOCHREALTIME
		cri cricket version >/dev/null
		T_VER+="$(us_since "$t0") "
	fi
	code=$(wait_exited "$id")
	[ "$code" = 0 ] || die "$kind run $name exited with $code (log: $W/logs/$kind/$name.log)"
	if [ ! -e "$W/logs/$kind/.checked" ]; then
		check_log "$kind" "$W/logs/$kind/$name.log"
		: >"$W/logs/$kind/.checked"
	fi
	cri cricket rm "$id" >/dev/null 2>&1 || die "crictl rm $id failed"
}

# check_log KIND FILE: the program printed its args and the env var
check_log() {
	local got
	got=$(awk '{ $1 = $2 = $3 = ""; sub(/^ +/, ""); print }' "$2")
	if ! grep -qx one <<<"$got" || ! grep -qx two <<<"$got" || ! grep -qx GREETING=hello <<<"$got"; then
		die "$1: unexpected output in $2: $got"
	fi
}

# round I: one run of linux and of warm, the order swapped every round
round() {
	local i=$1 k
	for ((k = 0; k < 2; k++)); do
		run_one "${PAIRED[(i + k) % 2]}" "r$i-${PAIRED[(i + k) % 2]}" 1
	done
}

# --- teardown hook (lib.sh's cleanup calls it) -------------------------------------------

cleanup_before_stop() {
	local id
	if [ -z "${DPID[cricket]:-}" ] || ! kill -0 "${DPID[cricket]}" 2>/dev/null; then return 0; fi
	for id in $(cri cricket pods -q 2>/dev/null); do
		cri cricket stopp "$id" >/dev/null 2>&1
		cri cricket rmp "$id" >/dev/null 2>&1 || log "could not remove pod $id"
	done
}

cleanup_after_stop() {
	[ -n "$RUN_DIR" ] && [ -d "$RUN_DIR" ] || return 0
	umount_under "$RUN_DIR/"
	rm -rf --one-file-system "$RUN_DIR"
}

# --- summary ------------------------------------------------------------------------------

summary() {
	local ver two kind a b c d
	local -A med
	read -r ver _ <<<"$(stats "$T_VER")"
	two=$(awk -v v="$ver" 'BEGIN { print 2 * v }')
	declare -A what=([linux]="linux, static binary" [cold]="wasm cold, just pulled" [warm]="wasm warm, preloaded")
	echo
	printf 'CreateContainer+StartContainer, %d runs each (ms): daemon side median p90 | crictl minus its %.1f ms median p90\n' \
		"$ROUNDS" "$(awk -v v="$ver" 'BEGIN { print v / 1000 }')"
	for kind in "${KINDS[@]}"; do
		read -r a b <<<"$(med_p90 "$(tr ' ' '\n' <<<"${D_RUN[$kind]}" | sed '/^$/d' | awk '{ printf "%.2f ", $1 / 1000 }')")"
		read -r c d <<<"$(ms_stats "${T_RUN[$kind]}" "$two")"
		printf '  %-24s %6.1f %6.1f | %6.1f %6.1f\n' "${what[$kind]}" "$a" "$b" "$c" "$d"
		med[$kind]=$a
	done
	echo "daemon side, medians (ms): CreateContainer | StartContainer"
	for kind in "${KINDS[@]}"; do
		read -r a _ <<<"$(med_p90 "$(tr ' ' '\n' <<<"${D_CREATE[$kind]}" | sed '/^$/d' | awk '{ printf "%.2f ", $1 / 1000 }')")"
		read -r c _ <<<"$(med_p90 "$(tr ' ' '\n' <<<"${D_START[$kind]}" | sed '/^$/d' | awk '{ printf "%.2f ", $1 / 1000 }')")"
		printf '  %-24s %6.2f | %6.2f\n' "${what[$kind]}" "$a" "$c"
	done
	awk -v w="${med[warm]}" -v l="${med[linux]}" -v c="${med[cold]}" 'BEGIN {
		printf "daemon side, medians: warm wasm / linux %.2f, cold wasm / linux %.2f\n", w / l, c / l }'
	# The runs of a round follow each other: their differences shed most of the load's drift.
	read -r a b <<<"$(med_p90 "$(paste -d' ' <(tr ' ' '\n' <<<"${D_RUN[warm]}" | sed '/^$/d') \
		<(tr ' ' '\n' <<<"${D_RUN[linux]}" | sed '/^$/d') | awk '{ printf "%.3f ", ($1 - $2) / 1000 }')")"
	printf 'daemon side, warm wasm minus linux of the same round: median %+.2f ms, p90 %+.2f ms\n' "$a" "$b"
}

# --- main -----------------------------------------------------------------------------------

main() {
	[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, mounts, cgroups)"
	local v
	[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
	[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer"
	[[ $PAUSE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "PAUSE must be a number of seconds"
	install_missing gcc=gcc /usr/include/stdio.h=libc6-dev clang=clang wasm-ld=lld \
		/usr/include/wasm32-wasi/stdio.h=wasi-libc \
		"$(echo /usr/lib/llvm-14/lib/clang/*/lib/wasi)/libclang_rt.builtins-wasm32.a=libclang-rt-14-dev-wasm32"
	check_crictl
	local bin port i kind
	bin=$(cricket_binary)

	setup_workdir wasm
	mkdir -p "$W/configs" "$W/logs" "$W/cricket/conf.d"
	port=$(free_port)
	start_registry "$port"
	build_images "$port"
	METRICS=127.0.0.1:$(free_port)
	# run/containers/<64 hex>/ctl.sock must fit a unix socket address (108 bytes): a temp dir path is too long
	RUN_DIR=$(mktemp -d /run/crb.XXXXXX)
	CACHE=$W/cricket/root/wasm-cache
	printf 'run = "%s"\n\n[metrics]\naddress = "%s"\n\n[runtimes.wasm]\ntype = "wasm"\n' \
		"$RUN_DIR" "$METRICS" >"$W/cricket/conf.d/50-bench.toml"
	start_cricket "$bin" "$port"
	for v in "${IMG[linux]}" "${IMG[cold]}"; do cri cricket pull "$v" >/dev/null; done
	log "$("$bin" version 2>/dev/null | head -n1), $(crictl --version)"

	PODCFG[linux]=$(host_pod_config bench-wasm linux)
	POD[linux]=$(cri cricket runp "${PODCFG[linux]}")
	PODCFG[cold]=$(host_pod_config bench-wasm cold)
	POD[cold]=$(cri cricket runp --runtime wasm "${PODCFG[cold]}")
	PODCFG[warm]=$(host_pod_config bench-wasm warm)
	POD[warm]=$(cri cricket runp --runtime wasm "${PODCFG[warm]}")

	log "warm-up: $WARMUP run(s) per kind"
	for ((i = 1; i <= WARMUP; i++)); do
		for kind in "${KINDS[@]}"; do run_one "$kind" "w$i-$kind" 0; done
	done
	log "$ROUNDS rounds of: ${PAIRED[*]}"
	for ((i = 1; i <= ROUNDS; i++)); do round "$i"; done
	log "$ROUNDS cold runs"
	for ((i = 1; i <= ROUNDS; i++)); do run_one cold "r$i-cold" 1; done
	log "compiled module in the cache: $(du -b "$CACHE"/*.cwasm | awk '{ print $1 }') bytes"
	summary
}

main "$@"
