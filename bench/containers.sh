#!/usr/bin/env bash
# Container latency and memory, cricket vs containerd + runc, side by side in
# one run.
#
# Starts a private docker-registry with a busybox image (Debian's static
# busybox, applets as symlinks) and a tiny static pause image (bench/pause.c;
# containerd's sandbox_image, pre-pulled; cricket needs none), starts cricket
# and containerd (cgroupfs driver both) with private configs/sockets/roots,
# pulls the busybox image into both, runs one pod per runtime, then:
#   1. WARMUP untimed containers per runtime (created, started, removed);
#   2. ROUNDS times `crictl create` + `crictl start` of a busybox
#      `sleep 3600` container in that pod, one per runtime in turn (which
#      runtime goes first alternates), so load drift hits both alike;
#   3. EXECS times `crictl exec -s <first container> true` (ExecSync), and
#      EXECS times `crictl exec <first container> true` (Exec: a streaming
#      URL, then SPDY to the runtime's streaming server), in turn;
#   4. daemon RSS and per-container processes with ROUNDS containers running
#      in the one pod: cricket's `cricket monitor` (one per container) and
#      pod-init, containerd's shim (one per pod) and pause;
#   5. PODS more pods per runtime with one such container each (untimed), and
#      the same memory figures again (here containerd has a shim per pod too);
#   6. ROUNDS times `crictl stop -t 10` + `crictl rm` of the timed containers,
#      interleaved the same way; the workload dies of SIGTERM (it is not PID 1:
#      the pod shares its PID namespace), so no runtime waits the timeout.
# Everything is torn down on exit: containers, pods, daemons, mounts.
#
# The pods use the host network (no CNI: containers don't touch the pod's
# network) and otherwise default namespaces (pod IPC, UTS and PID); each has a
# log directory and each container a log file, as kubelet sets them.
#
# Timing: each crictl call costs ~25 ms of its own (Go start-up, connect, a
# Version RPC). Alongside every timed step the script runs `crictl version`
# against the same runtime; the median of those is crictl's fixed cost, and
# the summary prints both the raw crictl times and the times minus that cost
# (twice for create + start and stop + rm: two crictl calls each). The
# daemons' own view of create + start and stop + remove: for cricket the rise
# of `cricket_grpc_request_duration_seconds_sum` (its metrics endpoint, read
# before and after each step), for containerd the time between its
# "CreateContainer within sandbox …" / "… returns container id" and
# "StartContainer for …" / "… returns successfully" log lines (and Stop/Remove
# likewise), summed per container.
#
#   sudo bench/containers.sh
#
# Environment:
#   ROUNDS=30         timed containers per runtime (create + start, stop + rm)
#   EXECS=50          timed `crictl exec -s` and `crictl exec` per runtime
#   PODS=10           extra pods per runtime, one container each, for memory
#   WARMUP=2          untimed containers per runtime first
#   CRICKET_BIN=...   use this binary instead of `cargo build --release`
#   CRICKET_LOG=...   cricket's [log] level (default "info")
#   BENCH_TMP=/var/tmp  where the temp dir goes (both runtimes write there)
#   KEEP=1            keep the temp dir (configs, logs, pod/container configs)
#
# Exit status: 0 ok, 1 failure, 2 crictl missing.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf use '.' as decimal point

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-30}
EXECS=${EXECS:-50}
PODS=${PODS:-10}
WARMUP=${WARMUP:-2}
CRICKET_LOG=${CRICKET_LOG:-info}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
STOP_TIMEOUT=10

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

IMAGE=""           # busybox image reference, pulled into both
METRICS=""         # cricket's metrics address
RUN_DIR=""         # cricket's run dir: short, see main
declare -A SHORT=([cricket]=ck [containerd]=ct)
declare -A POD     # runtime -> the timed containers' pod ID
declare -A PODCFG  # runtime -> that pod's config file
declare -A CTR     # "runtime i" -> container ID
declare -A T_START T_EXEC T_SEXEC T_STOP T_VER D_START D_STOP # runtime -> samples, microseconds

# --- images -------------------------------------------------------------------------

# A one-layer busybox: /bin/busybox plus applet symlinks (busybox-static runs
# them by argv[0])
build_busybox() {
	local r=$W/busybox a
	mkdir -p "$r/bin" "$r/tmp" "$r/etc"
	cp /bin/busybox "$r/bin/busybox"
	for a in sh sleep true cat ls; do ln -s busybox "$r/bin/$a"; done
	python3 "$HERE/mkimage.py" --registry "127.0.0.1:$1" --repo bench/busybox --tag 1 \
		--rootfs "$r" --entrypoint /bin/sh 2>>"$W/mkimage.log"
}

build_pause() {
	mkdir -p "$W/pause"
	gcc -static -O2 -s -o "$W/pause/pause" "$HERE/pause.c"
	python3 "$HERE/mkimage.py" --registry "127.0.0.1:$1" --repo bench/pause --tag 3.9 \
		--rootfs "$W/pause" --entrypoint /pause 2>>"$W/mkimage.log"
}

# --- configs ------------------------------------------------------------------------

# ctr_config NAME: writes a busybox `sleep 3600` container config, prints its path
ctr_config() {
	local f=$W/configs/ctr-$1.json
	cat >"$f" <<EOF
{
  "metadata": { "name": "$1", "attempt": 0 },
  "image": { "image": "$IMAGE" },
  "command": ["/bin/sleep", "3600"],
  "log_path": "$1.log",
  "linux": {}
}
EOF
	echo "$f"
}

# --- timed steps ----------------------------------------------------------------------

# daemon_mark RUNTIME METHOD...: cricket's handling time so far (nothing for containerd: its log has it)
daemon_mark() {
	[ "$1" = cricket ] || return 0
	shift
	cricket_rpc_secs "$@"
}

# daemon_since RUNTIME MARK METHOD...: cricket's handling time since MARK, microseconds, and a space
daemon_since() {
	[ "$1" = cricket ] || return 0
	local before=$2 after
	shift 2
	after=$(cricket_rpc_secs "$@")
	awk -v a="$after" -v b="$before" 'BEGIN { printf "%d ", (a - b) * 1e6 }'
}

# create_start RUNTIME POD POD_CONFIG NAME: prints the container ID
create_start() {
	local id
	id=$(cri "$1" create --no-pull "$2" "$(ctr_config "$4")" "$3") || return
	cri "$1" start "$id" >/dev/null
	echo "$id"
}

timed_start() { # timed_start RUNTIME I
	local rt=$1 i=$2 cfg id t0 mark
	cfg=$(ctr_config "c-${SHORT[$rt]}-$i")
	mark=$(daemon_mark "$rt" CreateContainer StartContainer)
	t0=$EPOCHREALTIME
	id=$(cri "$rt" create --no-pull "${POD[$rt]}" "$cfg" "${PODCFG[$rt]}")
	cri "$rt" start "$id" >/dev/null
	T_START[$rt]+="$(us_since "$t0") "
	D_START[$rt]+=$(daemon_since "$rt" "$mark" CreateContainer StartContainer)
	CTR["$rt $i"]=$id
	version_sample "$rt"
}

timed_exec() { # timed_exec RUNTIME I
	local rt=$1 t0
	t0=$EPOCHREALTIME
	cri "$rt" exec -s "${CTR["$rt 1"]}" true >/dev/null
	T_EXEC[$rt]+="$(us_since "$t0") "
	version_sample "$rt"
}

timed_stream_exec() { # timed_stream_exec RUNTIME I
	local rt=$1 t0
	t0=$EPOCHREALTIME
	cri "$rt" exec "${CTR["$rt 1"]}" true >/dev/null
	T_SEXEC[$rt]+="$(us_since "$t0") "
	version_sample "$rt"
}

# rm_ctr RUNTIME ID: `crictl rm`. After RemoveContainer crictl deletes the log
# file itself and complains when the runtime already did (cricket does): only a
# failure of rm shows its messages.
rm_ctr() {
	local err
	err=$(cri "$1" rm "$2" 2>&1 >/dev/null) || die "$1: crictl rm $2: $err"
}

timed_stop() { # timed_stop RUNTIME I
	local rt=$1 id=${CTR["$1 $2"]} t0 mark
	mark=$(daemon_mark "$rt" StopContainer RemoveContainer)
	t0=$EPOCHREALTIME
	cri "$rt" stop -t "$STOP_TIMEOUT" "$id" >/dev/null
	rm_ctr "$rt" "$id"
	T_STOP[$rt]+="$(us_since "$t0") "
	D_STOP[$rt]+=$(daemon_since "$rt" "$mark" StopContainer RemoveContainer)
	version_sample "$rt"
}

warm_up() {
	local rt i id
	for rt in cricket containerd; do
		for ((i = 1; i <= WARMUP; i++)); do
			id=$(create_start "$rt" "${POD[$rt]}" "${PODCFG[$rt]}" "warmup-${SHORT[$rt]}-$i")
			cri "$rt" exec -s "$id" true >/dev/null
			cri "$rt" stop -t "$STOP_TIMEOUT" "$id" >/dev/null
			rm_ctr "$rt" "$id"
		done
	done
}

# more_pods RUNTIME: PODS pods with one container each
more_pods() {
	local rt=$1 i cfg pod
	for ((i = 1; i <= PODS; i++)); do
		cfg=$(host_pod_config bench-containers "pod-${SHORT[$rt]}-$i")
		pod=$(cri "$rt" runp "$cfg")
		create_start "$rt" "$pod" "$cfg" "m-${SHORT[$rt]}-$i" >/dev/null
	done
}

# running RUNTIME N: die unless exactly N containers run
check_running() {
	local n
	n=$(cri "$1" ps -q --state running | wc -l)
	[ "$n" -eq "$2" ] || die "$1: $n running containers, expected $2"
}

# --- memory -----------------------------------------------------------------------------

monitors() { pids_with "monitor --config" "$RUN_DIR/"; }
pod_inits() { pids_with pod-init "$RUN_DIR/"; }
shims() { pids_with containerd-shim-runc-v2 "${SOCK[containerd]}"; }

# procs LABEL PID...: "N LABEL RSS r MiB (PSS p), each RSS r1 (PSS p1)"
procs() {
	local label=$1 n r s
	shift
	read -r n r s <<<"$(sum_mem "$@")"
	awk -v n="$n" -v l="$label" -v r="$r" -v s="$s" 'BEGIN {
		printf "%d %s RSS %.1f MiB (PSS %.1f)", n, l, r, s
		if (n > 0) printf ", each RSS %.2f (PSS %.2f)", r / n, s / n }'
}

memory_report() {
	local -a mo pi sh pa
	mapfile -t mo < <(monitors)
	mapfile -t pi < <(pod_inits)
	mapfile -t sh < <(shims)
	mapfile -t pa < <(children_of "${sh[@]}" | while read -r p; do
		[ "$(cat "/proc/$p/comm" 2>/dev/null)" = pause ] && echo "$p"
	done)
	printf 'memory, %s:\n' "$1"
	printf '  cricket:    daemon RSS %s MiB; %s; %s\n' "$(mib "$(rss_kib "${DPID[cricket]}")")" \
		"$(procs monitors "${mo[@]}")" "$(procs pod-init "${pi[@]}")"
	printf '  containerd: daemon RSS %s MiB; %s; %s\n' "$(mib "$(rss_kib "${DPID[containerd]}")")" \
		"$(procs shims "${sh[@]}")" "$(procs pause "${pa[@]}")"
}

# --- teardown hook (lib.sh's cleanup calls it) -------------------------------------------

cleanup_before_stop() {
	local rt id
	for rt in cricket containerd; do
		if [ -z "${DPID[$rt]:-}" ] || ! kill -0 "${DPID[$rt]}" 2>/dev/null; then continue; fi
		for id in $(cri "$rt" pods -q 2>/dev/null); do
			cri "$rt" stopp "$id" >/dev/null 2>&1
			cri "$rt" rmp "$id" >/dev/null 2>&1 || log "$rt: could not remove pod $id"
		done
	done
}

cleanup_after_stop() {
	[ -n "$RUN_DIR" ] && [ -d "$RUN_DIR" ] || return 0
	umount_under "$RUN_DIR/"
	rm -rf --one-file-system "$RUN_DIR"
}

# --- summary ------------------------------------------------------------------------------

# Daemon-side create+start and stop+remove of the timed containers, ms, one per line:
# per container, the sum of the two RPCs' spans between containerd's log lines
containerd_log_ms() { # containerd_log_ms create|stop
	awk -v want="$1" '
		function t() { match($0, /T[0-9:.]+/); split(substr($0, RSTART + 1, RLENGTH - 1), hms, ":")
			return hms[1] * 3600 + hms[2] * 60 + hms[3] }
		function span(a, b) { return b < a ? b - a + 86400 : b - a }
		function cid() { match($0, /for \\"[0-9a-f]+\\"/); return substr($0, RSTART + 6, RLENGTH - 8) }
		/msg="CreateContainer within sandbox .*Name:c-ct-[0-9]+,/ {
			match($0, /Name:c-ct-[0-9]+/); name = substr($0, RSTART, RLENGTH)
			if (/returns container id/) {
				match($0, /returns container id \\"[0-9a-f]+\\"/); id = substr($0, RSTART + 23, RLENGTH - 25)
				timed[id] = 1; create[id] = span(cstart[name], t())
			} else cstart[name] = t()
			next
		}
		/msg="(StartContainer|StopContainer|RemoveContainer) for / {
			op = $0; sub(/.*msg="/, "", op); sub(/ .*/, "", op); id = cid()
			if (/returns successfully/) dur[op, id] = span(s[op, id], t()); else if (!((op, id) in s)) s[op, id] = t()
		}
		END {
			for (id in timed) {
				if (want == "create") v = create[id] + dur["StartContainer", id]
				else v = dur["StopContainer", id] + dur["RemoveContainer", id]
				printf "%.1f\n", v * 1000
			}
		}' "$W/containerd.log"
}

# us_to_ms "us1 us2 ...": the same in ms, one per line
us_to_ms() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | awk '{ printf "%.1f\n", $1 / 1000 }'; }

summary() {
	local ck_ver ct_ver a b c d ck2 ct2
	read -r ck_ver _ <<<"$(stats "${T_VER[cricket]}")"
	read -r ct_ver _ <<<"$(stats "${T_VER[containerd]}")"
	ck2=$(awk -v v="$ck_ver" 'BEGIN { print 2 * v }')
	ct2=$(awk -v v="$ct_ver" 'BEGIN { print 2 * v }')
	echo
	awk -v a="$ck_ver" -v b="$ct_ver" -v n="$((2 * ROUNDS + 2 * EXECS))" 'BEGIN {
		printf "crictl fixed cost (median of %d `crictl version` per runtime): cricket %.1f ms, containerd %.1f ms\n", n, a / 1000, b / 1000 }'

	read -r a b <<<"$(ms_stats "${T_START[cricket]}")"
	read -r c d <<<"$(ms_stats "${T_START[containerd]}")"
	line "CreateContainer+StartContainer ($ROUNDS), raw crictl create + start" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(med_p90 "$(us_to_ms "${D_START[cricket]}" | tr '\n' ' ')")"
	read -r c d <<<"$(med_p90 "$(containerd_log_ms create | tr '\n' ' ')")"
	line "CreateContainer+StartContainer ($ROUNDS), daemon side" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(ms_stats "${T_EXEC[cricket]}")"
	read -r c d <<<"$(ms_stats "${T_EXEC[containerd]}")"
	line "ExecSync true ($EXECS), raw crictl exec -s" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(ms_stats "${T_SEXEC[cricket]}")"
	read -r c d <<<"$(ms_stats "${T_SEXEC[containerd]}")"
	line "Exec (streaming) true ($EXECS), raw crictl exec" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(ms_stats "${T_STOP[cricket]}")"
	read -r c d <<<"$(ms_stats "${T_STOP[containerd]}")"
	line "StopContainer+RemoveContainer ($ROUNDS), raw crictl stop + rm" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(med_p90 "$(us_to_ms "${D_STOP[cricket]}" | tr '\n' ' ')")"
	read -r c d <<<"$(med_p90 "$(containerd_log_ms stop | tr '\n' ' ')")"
	line "StopContainer+RemoveContainer ($ROUNDS), daemon side" "$a" "$b" "$c" "$d"

	echo "# below: crictl times minus crictl's fixed cost (twice for create + start and stop + rm)"
	read -r a b <<<"$(ms_stats "${T_START[cricket]}" "$ck2")"
	read -r c d <<<"$(ms_stats "${T_START[containerd]}" "$ct2")"
	line "CreateContainer+StartContainer ($ROUNDS)" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(ms_stats "${T_EXEC[cricket]}" "$ck_ver")"
	read -r c d <<<"$(ms_stats "${T_EXEC[containerd]}" "$ct_ver")"
	line "ExecSync true ($EXECS)" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(ms_stats "${T_SEXEC[cricket]}" "$ck_ver")"
	read -r c d <<<"$(ms_stats "${T_SEXEC[containerd]}" "$ct_ver")"
	line "Exec (streaming) true ($EXECS)" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(ms_stats "${T_STOP[cricket]}" "$ck2")"
	read -r c d <<<"$(ms_stats "${T_STOP[containerd]}" "$ct2")"
	line "StopContainer+RemoveContainer ($ROUNDS)" "$a" "$b" "$c" "$d"
}

# --- main -----------------------------------------------------------------------------------

main() {
	[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, mounts, cgroups)"
	local v
	for v in ROUNDS EXECS; do
		[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
	done
	for v in PODS WARMUP; do
		[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer"
	done
	install_missing gcc=gcc /usr/include/stdio.h=libc6-dev /bin/busybox=busybox-static
	check_crictl
	local bin port pause rt i
	bin=$(cricket_binary)

	setup_workdir containers
	mkdir -p "$W/configs" "$W/logs" "$W/cricket/conf.d"
	port=$(free_port)
	start_registry "$port"
	IMAGE=$(build_busybox "$port")
	pause=$(build_pause "$port")
	METRICS=127.0.0.1:$(free_port)
	# run/containers/<64 hex>/ctl.sock must fit a unix socket address (108 bytes): a temp dir path is too long
	RUN_DIR=$(mktemp -d /run/crb.XXXXXX)
	printf 'run = "%s"\n\n[metrics]\naddress = "%s"\n' "$RUN_DIR" "$METRICS" >"$W/cricket/conf.d/50-bench.toml"
	start_cricket "$bin" "$port"
	start_containerd "$port" "" "" "$pause"
	for rt in cricket containerd; do cri "$rt" pull "$IMAGE" >/dev/null; done
	cri containerd pull "$pause" >/dev/null
	log "$("$bin" version 2>/dev/null | head -n1), $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR == 1 {print $3}'), $(crictl --version)"
	log "image $IMAGE; sandbox image for containerd: $pause (pre-pulled)"

	for rt in cricket containerd; do
		PODCFG[$rt]=$(host_pod_config bench-containers "bench-${SHORT[$rt]}")
		POD[$rt]=$(cri "$rt" runp "${PODCFG[$rt]}")
	done

	log "warm-up: $WARMUP container(s) per runtime"
	warm_up

	log "CreateContainer + StartContainer x $ROUNDS per runtime"
	for ((i = 1; i <= ROUNDS; i++)); do in_turn timed_start "$i"; done
	for rt in cricket containerd; do check_running "$rt" "$ROUNDS"; done

	log "ExecSync x $EXECS per runtime"
	for ((i = 1; i <= EXECS; i++)); do in_turn timed_exec "$i"; done
	log "Exec (streaming) x $EXECS per runtime"
	for ((i = 1; i <= EXECS; i++)); do in_turn timed_stream_exec "$i"; done

	local mem1 mem2
	mem1=$(memory_report "$ROUNDS containers in 1 pod")
	if ((PODS > 0)); then
		log "$PODS more pods per runtime, one container each"
		for rt in cricket containerd; do more_pods "$rt"; done
		for rt in cricket containerd; do check_running "$rt" $((ROUNDS + PODS)); done
		mem2=$(memory_report "$ROUNDS containers in 1 pod + $PODS pods with 1 container each")
	fi

	log "StopContainer + RemoveContainer x $ROUNDS per runtime"
	for ((i = 1; i <= ROUNDS; i++)); do in_turn timed_stop "$i"; done
	for rt in cricket containerd; do check_running "$rt" "$PODS"; done

	echo "$mem1"
	[ -z "${mem2:-}" ] || echo "$mem2"
	summary
}

main "$@"
