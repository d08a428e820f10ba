# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run): prerequisites, a private
# docker-registry, cricket and containerd with private configs/sockets/roots
# in one temp dir ($W), crictl against one of them, statistics, teardown.
#
# A script sets HERE/REPO, KEEP, CRICKET_LOG and BENCH_TMP, then calls
# setup_workdir, which installs the EXIT trap (cleanup). Optional hooks, run
# by cleanup if the script defines them:
#   cleanup_before_stop   while the daemons still run (remove pods, ...)
#   cleanup_after_stop    after they are gone (host network state, ...)

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

# install_missing [CMD=PACKAGE...]: apt-get install what is missing of the
# common set (registry, containerd, runc, python3, curl, protoc) plus the
# extras; CMD is a command name or an absolute path the package ships
install_missing() {
	local -A pkg_of=([docker-registry]=docker-registry [containerd]=containerd [ctr]=containerd
		[runc]=runc [python3]=python3 [curl]=curl)
	[ -n "${CRICKET_BIN:-}" ] || pkg_of[protoc]=protobuf-compiler # cricket's build needs protoc
	local kv
	for kv in "$@"; do pkg_of[${kv%%=*}]=${kv#*=}; done
	local cmd missing=()
	for cmd in "${!pkg_of[@]}"; do
		case $cmd in
		/*) [ -e "$cmd" ] || missing+=("${pkg_of[$cmd]}") ;; # a file the package ships
		*) command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}") ;;
		esac
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
	echo "${CARGO_TARGET_DIR:-$REPO/target}/release/cricket"
}

# --- helpers -----------------------------------------------------------------

# version_sample RUNTIME: one timed `crictl version`, appended to T_VER[RUNTIME]
# (the caller declares T_VER): crictl's own cost next to every timed step
version_sample() {
	local t0=$EPOCHREALTIME
	cri "$1" version >/dev/null
	T_VER[$1]+="$(us_since "$t0") "
}

# in_turn FN I: FN for both runtimes; cricket first for odd I
in_turn() {
	if (($2 % 2)); then
		"$1" cricket "$2"
		"$1" containerd "$2"
	else
		"$1" containerd "$2"
		"$1" cricket "$2"
	fi
}

# cricket_rpc_secs METHOD...: the sum of cricket's gRPC handling time (seconds) of
# these methods so far, from its metrics endpoint at $METRICS
cricket_rpc_secs() {
	cricket_rpc_secs_each "$@" | awk '{ for (i = 1; i <= NF; i++) s += $i } END { printf "%.6f", s }'
}

# cricket_rpc_secs_each METHOD...: each method's handling time so far (seconds), in the order given
cricket_rpc_secs_each() {
	curl -fsS "http://$METRICS/metrics" | awk -v list="$*" '
		BEGIN { n = split(list, want, " ") }
		/^cricket_grpc_request_duration_seconds_sum\{/ {
			match($0, /method="[^"]*"/); s[substr($0, RSTART + 8, RLENGTH - 9)] += $NF
		}
		END { for (i = 1; i <= n; i++) printf "%.6f%s", s[want[i]], (i < n ? " " : "") }'
}

# host_pod_config NAMESPACE NAME: writes a host-network pod config (logs in
# $W/logs/NAME), prints its path
host_pod_config() {
	local f=$W/configs/$2.json
	mkdir -p "$W/logs/$2" "$W/configs"
	cat >"$f" <<EOF
{
  "metadata": { "name": "$2", "namespace": "$1", "uid": "$(basename "$W")-$2", "attempt": 0 },
  "log_directory": "$W/logs/$2",
  "linux": { "security_context": { "namespace_options": { "network": 2 } } }
}
EOF
	echo "$f"
}


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

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

# CPU time (user+sys, all threads) a daemon has used so far, in seconds
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# stats "v1 v2 ...": prints "median min p90 max" (p90: nearest rank)
stats() {
	tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '
		{ v[NR] = $1 }
		END {
			m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			r = int(0.9 * NR); if (r < 0.9 * NR) r++
			printf "%.3f %.3f %.3f %.3f", m, v[1], v[r], v[NR]
		}'
}

# --- timing and memory of processes ----------------------------------------------

us_since() { echo $((${EPOCHREALTIME/./} - ${1/./})); } # microseconds since an EPOCHREALTIME

# ms_stats "us1 us2 ..." [MINUS_US]: "median p90" in ms, each sample minus MINUS_US
ms_stats() {
	local med p90
	read -r med _ p90 _ <<<"$(stats "$1")"
	awk -v m="$med" -v p="$p90" -v d="${2:-0}" 'BEGIN { printf "%.1f %.1f", (m - d) / 1000, (p - d) / 1000 }'
}

# med_p90 "v1 v2 ...": "median p90", unscaled
med_p90() {
	local med p90
	read -r med _ p90 _ <<<"$(stats "$1")"
	echo "$med $p90"
}

# line LABEL CK_MED CK_P90 CT_MED CT_P90
line() {
	awk -v l="$1" -v a="$2" -v b="$3" -v c="$4" -v d="$5" 'BEGIN {
		printf "%s: cricket median %.0f ms p90 %.0f ms, containerd median %.0f ms p90 %.0f ms, ratio %.2f\n", l, a, b, c, d, a / c }'
}

kib_field() { awk -v f="$2:" '$1 == f { v = $2 } END { print v + 0 }' "$1" 2>/dev/null || echo 0; }
rss_kib() { kib_field "/proc/$1/status" VmRSS; }
pss_kib() { kib_field "/proc/$1/smaps_rollup" Pss; }

# pids_with STRING...: processes whose command line contains every STRING
pids_with() {
	ps -eo pid=,args= | awk -v n=$# -v pats="$(printf '%s\n' "$@")" '
		BEGIN { split(pats, p, "\n") }
		{ ok = 1; for (i = 1; i <= n; i++) if (index($0, p[i]) == 0) ok = 0; if (ok && $2 != "awk") print $1 }'
}

children_of() { # pids whose parent is one of the given pids
	[ $# -gt 0 ] || return 0
	ps -eo pid=,ppid= | awk -v list=" $* " 'index(list, " " $2 " ") { print $1 }'
}

# sum_mem PID...: "COUNT RSS_MIB PSS_MIB"
sum_mem() {
	local p r=0 s=0
	for p in "$@"; do
		r=$((r + $(rss_kib "$p"))) s=$((s + $(pss_kib "$p")))
	done
	awk -v n=$# -v r="$r" -v s="$s" 'BEGIN { printf "%d %.1f %.1f", n, r / 1024, s / 1024 }'
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# --- work dir and teardown ----------------------------------------------------

# setup_workdir NAME: traps, then $W = a fresh temp dir under BENCH_TMP
setup_workdir() {
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	mkdir -p "$BENCH_TMP"
	W=$(mktemp -d "$BENCH_TMP/cricket-$1.XXXXXX")
	: >"$W/crictl.yaml" # ignore /etc/crictl.yaml
}

# umount_under DIR: every mount at or below DIR, deepest first
umount_under() {
	awk -v d="$1" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r |
		while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
}

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	set +e
	if declare -F cleanup_before_stop >/dev/null; then cleanup_before_stop; fi
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
	if declare -F cleanup_after_stop >/dev/null; then cleanup_after_stop; fi
	if [ -n "$W" ] && [ -d "$W" ]; then
		# containerd mounts snapshots under its root; never leave one behind
		umount_under "$W/"
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

# start_cricket BIN REGISTRY_PORT [CNI_CONF_DIR CNI_BIN_DIR]
# Without a CNI dir: an empty one of its own (images only).
start_cricket() {
	local bin=$1 port=$2 d=$W/cricket
	local cni_conf=${3:-$d/cni} cni_bin=${4:-}
	mkdir -p "$d/conf.d" "$cni_conf"
	cat >"$d/cricket.toml" <<EOF
socket = "$d/cricket.sock"
root = "$d/root"
run = "$d/run"

[log]
level = "$CRICKET_LOG"

[cni]
conf_dir = "$cni_conf"
${cni_bin:+bin_dirs = [\"$cni_bin\"]}

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

# start_containerd REGISTRY_PORT [CNI_CONF_DIR CNI_BIN_DIR SANDBOX_IMAGE]
# Without a CNI dir: empty ones of its own (images only). Runs runc with the
# cgroupfs driver (SystemdCgroup = false), like cricket's default.
start_containerd() {
	local port=$1 d=$W/containerd
	local host=127.0.0.1:$port
	local cni_conf=${2:-$d/cni/net.d} cni_bin=${3:-$d/cni/bin} sandbox_image=${4:-}
	mkdir -p "$d/root" "$d/state" "$d/certs.d/$host" "$cni_conf" "$cni_bin"
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
  # root lacks CAP_SYS_RESOURCE here: runc can't set the pause container's -998 oom_score_adj
  restrict_oom_score_adj = true
${sandbox_image:+  sandbox_image = \"$sandbox_image\"}
  # without a CNI config, CRI still serves images; it only logs
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$cni_conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$d/certs.d"
EOF
	SOCK[containerd]=$d/containerd.sock
	start_daemon containerd "$W/containerd.log" containerd --config "$d/config.toml"
	DPID[containerd]=${PIDS[-1]}
	wait_daemon containerd
}
