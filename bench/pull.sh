#!/usr/bin/env bash
# Image pull time, cricket vs containerd, side by side in one run.
#
# Starts a private docker-registry (free 127.0.0.1 port, storage in a temp
# dir), pushes a ~100 MiB random-data image to it (bench/mkimage.py), starts
# cricket and containerd with private configs/sockets/roots in the same temp
# dir, then times `crictl pull` against each for ROUNDS rounds (interleaved,
# order alternating per round), removing the image and checking that its
# content is really gone between rounds. Everything is torn down on exit.
#
#   sudo bench/pull.sh
#
# Environment:
#   ROUNDS=5          timed pulls per runtime
#   WARMUP=1          untimed pulls per runtime before the timed ones
#   LAYERS=5          image layers
#   LAYER_MIB=20      random MiB per layer
#   CRICKET_BIN=...   use this binary instead of `cargo build --release`
#   CRICKET_LOG=...   cricket's [log] level (default "info,cricket=debug",
#                     which logs per-layer `layer unpacked ... elapsed_ms=`)
#   BENCH_TMP=/var/tmp  where the temp dir goes (both runtimes write there)
#   KEEP=1            keep the temp dir (configs, logs) for inspection
#
# Exit status: 0 ok, 1 failure, 2 crictl missing.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf use '.' as decimal point

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-1}
LAYERS=${LAYERS:-5}
LAYER_MIB=${LAYER_MIB:-20}
CRICKET_LOG=${CRICKET_LOG:-info,cricket=debug}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}

W=""                 # temp dir holding everything
PIDS=()              # daemons we started, in start order
declare -A SOCK      # runtime -> CRI socket
declare -A DPID      # runtime -> daemon pid

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# --- prerequisites ---------------------------------------------------------

install_missing() {
	local -A pkg_of=([docker-registry]=docker-registry [containerd]=containerd [ctr]=containerd
		[runc]=runc [python3]=python3 [curl]=curl)
	[ -n "${CRICKET_BIN:-}" ] || pkg_of[protoc]=protobuf-compiler # cricket's build needs protoc
	local cmd missing=()
	for cmd in "${!pkg_of[@]}"; do
		command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

check_crictl() {
	command -v crictl >/dev/null 2>&1 && return 0
	cat >&2 <<'EOF'
crictl not found on PATH. Install cri-tools v1.32 from kubernetes-sigs/cri-tools, e.g.:
  curl -fsSL https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.32.0/crictl-v1.32.0-linux-amd64.tar.gz \
    | tar -xz -C /usr/local/bin crictl
EOF
	exit 2
}

cricket_binary() {
	if [ -n "${CRICKET_BIN:-}" ]; then
		[ -x "$CRICKET_BIN" ] || die "CRICKET_BIN=$CRICKET_BIN is not executable"
		echo "$CRICKET_BIN"
		return
	fi
	command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup.rs) or set CRICKET_BIN"
	log "building cricket (cargo build --release)"
	(cd "$REPO" && cargo build --release --quiet) >&2
	echo "$REPO/target/release/cricket"
}

# --- helpers -----------------------------------------------------------------

# wait_until SECONDS CMD...: poll CMD every 50 ms until it succeeds
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.05
	done
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_daemon NAME LOGFILE CMD...: run CMD in the background, remember its pid
start_daemon() {
	local name=$1 logf=$2
	shift 2
	"$@" >"$logf" 2>&1 </dev/null &
	PIDS+=("$!")
	log "$name started (pid $!, log $logf)"
}

stop_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# wait_daemon RUNTIME: until it answers CRI; fail fast if it died
wait_daemon() {
	local rt=$1 deadline=$((SECONDS + 30))
	until cri "$rt" images >/dev/null 2>&1; do
		kill -0 "${DPID[$rt]}" 2>/dev/null || die "$rt exited during start-up (log: $W/$rt.log)"
		[ $SECONDS -lt $deadline ] || die "$rt did not serve on ${SOCK[$rt]} within 30 s"
		sleep 0.05
	done
}

cri() { # cri RUNTIME ARGS...: crictl against RUNTIME's socket only
	local ep="unix://${SOCK[$1]}"
	shift
	crictl --config "$W/crictl.yaml" --runtime-endpoint "$ep" --image-endpoint "$ep" "$@"
}

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	set +e
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
	if [ -n "$W" ] && [ -d "$W" ]; then
		# containerd mounts snapshots under its root while unpacking; never leave one behind
		awk -v w="$W/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r |
			while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
		if [ $rc -ne 0 ] && [ $rc -ne 130 ] && [ $rc -ne 143 ]; then
			for f in "$W/cricket.log" "$W/containerd.log"; do
				[ -s "$f" ] && { echo "--- tail of $f" >&2; tail -n 15 "$f" >&2; }
			done
		fi
		if [ "$KEEP" = 1 ]; then
			log "kept $W"
		else
			rm -rf --one-file-system "$W"
		fi
	fi
	exit $rc
}

# --- daemons -----------------------------------------------------------------

start_registry() {
	local port=$1
	mkdir -p "$W/registry"
	cat >"$W/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/registry
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
EOF
	start_daemon registry "$W/registry.log" docker-registry serve "$W/registry.yml"
	wait_until 20 curl -fs "http://127.0.0.1:$port/v2/" || die "registry did not come up on 127.0.0.1:$port"
}

start_cricket() {
	local bin=$1 port=$2 d=$W/cricket
	mkdir -p "$d/conf.d" "$d/cni"
	cat >"$d/cricket.toml" <<EOF
socket = "$d/cricket.sock"
root = "$d/root"
run = "$d/run"

[log]
level = "$CRICKET_LOG"

[cni]
conf_dir = "$d/cni"

[registries.hosts."127.0.0.1:$port"]
insecure = true
EOF
	SOCK[cricket]=$d/cricket.sock
	# CRICKET_* variables override config keys: keep ours (CRICKET_BIN, ...) out of its environment
	local unset=() v
	for v in $(compgen -e | grep '^CRICKET_' || true); do unset+=(-u "$v"); done
	start_daemon cricket "$W/cricket.log" env "${unset[@]}" "$bin" --config "$d/cricket.toml" --config-dir "$d/conf.d" serve
	DPID[cricket]=${PIDS[-1]} # env execs cricket: same pid
	wait_daemon cricket
}

start_containerd() {
	local port=$1 d=$W/containerd
	local host=127.0.0.1:$port
	mkdir -p "$d/root" "$d/state" "$d/certs.d/$host" "$d/cni/bin" "$d/cni/net.d"
	# plain HTTP to our registry, through the hosts.toml mechanism (config_path)
	cat >"$d/certs.d/$host/hosts.toml" <<EOF
server = "http://$host"

[host."http://$host"]
  capabilities = ["pull", "resolve"]
EOF
	cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
# nothing outside the temp dir: no /opt/containerd, no snapshotters we don't use
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "$d/containerd.sock"

[debug]
  level = "info"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  # no CNI config on purpose: CRI still serves images, it only logs
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$d/cni/bin"
    conf_dir = "$d/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$d/certs.d"
EOF
	SOCK[containerd]=$d/containerd.sock
	start_daemon containerd "$W/containerd.log" containerd --config "$d/config.toml"
	DPID[containerd]=${PIDS[-1]}
	wait_daemon containerd
}

# --- "really gone" checks ------------------------------------------------------

empty_dir() { [ -d "$1" ] && [ -z "$(ls -A "$1")" ]; }

cricket_empty() {
	local s=$W/cricket/root/images
	[ -z "$(cri cricket images -q)" ] &&
		empty_dir "$s/snapshots" && empty_dir "$s/blobs/sha256" && empty_dir "$s/tmp"
}

containerd_empty() {
	local c=(ctr -a "${SOCK[containerd]}" -n k8s.io) r=$W/containerd/root
	[ -z "$(cri containerd images -q)" ] &&
		[ -z "$("${c[@]}" content ls -q)" ] &&
		[ -z "$("${c[@]}" snapshots --snapshotter overlayfs ls | tail -n +2)" ] &&
		empty_dir "$r/io.containerd.content.v1.content/blobs/sha256" &&
		empty_dir "$r/io.containerd.snapshotter.v1.overlayfs/snapshots"
}

# remove RUNTIME: rmi, then wait until the store holds nothing of the image.
# containerd's CRI deletes the last image reference with SynchronousDelete, so
# its GC (content blobs + overlay snapshots) has run when rmi returns (with
# 1.6.20 the store was always empty right away); we still poll for up to 10 s
# and log it when a wait was needed. cricket frees layers inside rmi. Then `sync`,
# so the writeback of one round's unpacked data doesn't land in the next.
remove() {
	local rt=$1 t0=$EPOCHREALTIME
	cri "$rt" rmi "$IMAGE" >/dev/null
	if ! "${rt}_empty"; then
		wait_until 10 "${rt}_empty" || die "$rt still holds content 10 s after rmi"
		log "$rt: content gone $(elapsed "$t0") s after rmi (after waiting for GC)"
	fi
	sync
}

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

# pull RUNTIME: timed crictl pull; prints seconds
pull() {
	local t0=$EPOCHREALTIME
	cri "$1" pull "$IMAGE" >/dev/null
	elapsed "$t0"
}

# After a pull the store must hold the image: proves the emptiness checks see content.
check_present() { ! "${1}_empty" || die "$1: pull succeeded but its store looks empty"; }

# CPU time (user+sys, all threads) a daemon has used so far, in seconds
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# stats "v1 v2 ...": prints "median min"
stats() {
	tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '
		{ v[NR] = $1 }
		END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f %.3f", m, v[1] }'
}

# --- main --------------------------------------------------------------------

main() {
	[ "$(id -u)" -eq 0 ] || die "run as root (containerd's overlayfs snapshotter mounts)"
	[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
	install_missing
	check_crictl
	local bin port
	bin=$(cricket_binary)

	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	mkdir -p "$BENCH_TMP"
	W=$(mktemp -d "$BENCH_TMP/cricket-pull.XXXXXX")
	: >"$W/crictl.yaml" # ignore /etc/crictl.yaml

	port=$(free_port)
	start_registry "$port"
	IMAGE=$(python3 "$HERE/mkimage.py" --registry "127.0.0.1:$port" --layers "$LAYERS" --layer-mib "$LAYER_MIB")
	start_cricket "$bin" "$port"
	start_containerd "$port"
	log "$("$bin" version 2>/dev/null | head -n1), $(containerd --version | awk '{print $3}'), $(crictl --version)"
	log "image $IMAGE; $WARMUP warm-up + $ROUNDS timed pulls per runtime"

	local rt i t c0 order
	local -A times=() cpu=()
	for rt in cricket containerd; do
		for ((i = 0; i < WARMUP; i++)); do
			t=$(pull "$rt")
			log "warm-up $rt: $t s"
			check_present "$rt"
			remove "$rt"
		done
	done
	: >"$W/cricket.layers" # per-layer unpack times of the timed rounds only
	local logpos
	for ((i = 1; i <= ROUNDS; i++)); do
		order="cricket containerd"
		((i % 2)) || order="containerd cricket"
		for rt in $order; do
			logpos=$(stat -c %s "$W/cricket.log")
			c0=$(cpu_secs "${DPID[$rt]}")
			t=$(pull "$rt")
			times[$rt]+="$t "
			cpu[$rt]=$(awk -v a="${cpu[$rt]:-0}" -v b="$c0" -v c="$(cpu_secs "${DPID[$rt]}")" 'BEGIN { print a + c - b }')
			log "round $i $rt: $t s"
			check_present "$rt"
			[ "$rt" = cricket ] && tail -c +$((logpos + 1)) "$W/cricket.log" | sed 's/\x1b\[[0-9;]*m//g' |
				sed -n 's/.*layer unpacked.*elapsed_ms=\([0-9]*\).*/\1/p' >>"$W/cricket.layers"
			remove "$rt"
		done
	done

	local ck_med ck_min ct_med ct_min l_med l_min
	read -r ck_med ck_min <<<"$(stats "${times[cricket]}")"
	read -r ct_med ct_min <<<"$(stats "${times[containerd]}")"
	echo "cricket    pulls (s): ${times[cricket]}"
	echo "containerd pulls (s): ${times[containerd]}"
	if [ -s "$W/cricket.layers" ]; then # needs cricket=debug in CRICKET_LOG
		read -r l_med l_min <<<"$(stats "$(tr '\n' ' ' <"$W/cricket.layers")")"
		echo "cricket per-layer download+unpack (ms, $(wc -l <"$W/cricket.layers") layers):" \
			"median ${l_med%.*}, min ${l_min%.*}, max $(sort -g "$W/cricket.layers" | tail -n1)"
	fi
	awk -v a="${cpu[cricket]}" -v b="${cpu[containerd]}" -v n="$ROUNDS" \
		'BEGIN { printf "daemon CPU per pull (user+sys): cricket %.2f s, containerd %.2f s\n", a / n, b / n }'
	local label
	label=$(awk -v n="$LAYERS" -v m="$LAYER_MIB" 'BEGIN { printf "%g MiB (%d layers)", n * m, n }')
	awk -v l="$label" -v a="$ck_min" -v b="$ct_min" \
		'BEGIN { printf "pull %s min:    cricket %.2f s, containerd %.2f s, ratio %.2f\n", l, a, b, a / b }'
	awk -v l="$label" -v a="$ck_med" -v b="$ct_med" \
		'BEGIN { printf "pull %s: cricket median %.2f s, containerd median %.2f s, ratio %.2f\n", l, a, b, a / b }'
}

main "$@"
