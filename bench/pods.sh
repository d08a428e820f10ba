#!/usr/bin/env bash
# Pod sandbox latency and memory, cricket vs containerd + runc, side by side
# in one run, with the same CNI network.
#
# Starts a private docker-registry with a tiny static pause image (bench/pause.c;
# containerd's sandbox_image, pre-pulled; cricket needs none), writes one CNI
# config (bridge + host-local + portmap, its own bridge name, a free 10.x/16,
# IPAM data in the temp dir) that both runtimes use, starts cricket and
# containerd (cgroupfs driver both) with private configs/sockets/roots, then:
#   1. WARMUP untimed pods per runtime (the first one creates the bridge);
#   2. idle daemon RSS;
#   3. PODS times `crictl runp`, one pod per runtime in turn (which runtime
#      goes first alternates), so load drift hits both alike;
#   4. daemon RSS and per-pod processes with all pods running;
#   5. PODS times `crictl stopp` + `crictl rmp`, interleaved the same way;
#   6. leftovers: pinned/netns mounts, mounts under each runtime's dirs,
#      per-pod processes, cgroups, veths on the bridge, IPAM leases, iptables.
# Everything is torn down on exit: pods, daemons, mounts, the bridge, the
# plugins' iptables chains, our FORWARD rule; ip_forward is restored.
#
# Timing: each crictl call costs ~25 ms of its own (Go start-up, connect, a
# Version RPC). Alongside every timed call the script runs `crictl version`
# against the same runtime; the median of those is crictl's fixed cost, and
# the summary prints both the raw crictl times and the times minus that cost
# (minus twice that for stopp + rmp: two crictl calls). For RunPodSandbox it
# also prints the daemons' own view: cricket's `pod sandbox ready elapsed_ms`,
# and the time between containerd's "RunPodSandbox for" log lines.
#
# The pods are plain: metadata, `linux: {}` (default namespace options: pod
# network, IPC, UTS and PID namespaces), no port mappings, so both runtimes
# do the same CNI work (portmap gets no mappings).
#
#   sudo bench/pods.sh
#
# Environment:
#   PODS=50           timed pods per runtime
#   WARMUP=2          untimed pods per runtime first
#   CRICKET_BIN=...   use this binary instead of `cargo build --release`
#   CRICKET_LOG=...   cricket's [log] level (default "info", which logs
#                     `pod sandbox ready ... elapsed_ms=`; "info,cricket=debug"
#                     adds per-plugin CNI times)
#   BENCH_TMP=/var/tmp  where the temp dir goes (both runtimes write there)
#   KEEP=1            keep the temp dir (configs, logs, pod configs)
#
# Exit status: 0 ok, 1 failure, 2 crictl missing.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and printf use '.' as decimal point

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PODS=${PODS:-50}
WARMUP=${WARMUP:-2}
CRICKET_LOG=${CRICKET_LOG:-info}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
CNI_BIN=/usr/lib/cni # Debian's containernetworking-plugins

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

NET=""              # CNI network name, unique per run (in rule comments, chain hashes)
BRIDGE=""           # our bridge
SUBNET=""           # our pod subnet
CNI_CONF=""         # conf dir both runtimes read
FORWARD_WAS=""      # net.ipv4.ip_forward before the run
FWD_RULE=()         # our FORWARD rule, as iptables arguments after -I/-D
NETNS_BEFORE=""     # /run/netns entries before the run (containerd adds its own)
CGROUPS_BEFORE=""   # parent cgroups the runtimes create (k8s.io, cricket) that existed before
ALL_IDS=()          # every sandbox ID either runtime gave us (chain names derive from them)
declare -A IDS      # runtime -> its sandbox IDs, space-separated
declare -A SHORT=([cricket]=ck [containerd]=ct)

# --- host network: subnet, CNI config, teardown ---------------------------------

# A 10.N.0.0/16 overlapping no IPv4 address or route on this host
pick_subnet() {
	{
		ip -4 -o addr show | awk '{print $4}'
		ip -4 route show table all | awk '$1 ~ /^[0-9]/ {print $1}'
	} | python3 -c '
import ipaddress, sys
used = [ipaddress.ip_network(l.strip(), strict=False) for l in sys.stdin if l.strip()]
for n in range(200, 255):
    net = ipaddress.ip_network("10.%d.0.0/16" % n)
    if not any(net.overlaps(u) for u in used):
        print(net)
        break
else:
    sys.exit("no free 10.x.0.0/16 in 10.200-254")'
}

write_cni_conf() {
	local gw=${SUBNET%.0/16}.1
	CNI_CONF=$W/cni/net.d
	mkdir -p "$CNI_CONF" "$W/cni/ipam"
	cat >"$CNI_CONF/10-$NET.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$W/cni/ipam",
        "ranges": [[{ "subnet": "$SUBNET", "gateway": "$gw" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

# The bridge plugin turns ip_forward on: keep pod traffic on this machine.
guard_forwarding() {
	FORWARD_WAS=$(cat /proc/sys/net/ipv4/ip_forward)
	FWD_RULE=(FORWARD -s "$SUBNET" ! -o "$BRIDGE" -m comment --comment "$NET: pod traffic stays local" -j DROP)
	iptables -w -I "${FWD_RULE[@]}"
}

# The chains the plugins make per pod: bridge's ipMasq chain CNI-<hash>, portmap's CNI-DN-<hash>
pod_chains() {
	local id h
	for id in "${ALL_IDS[@]}"; do
		h=$(printf '%s' "$NET$id" | sha512sum)
		echo "CNI-${h:0:24}"
		echo "CNI-DN-${h:0:21}"
	done
}

# Rules (iptables-save form) carrying our network's comment, and our pod chains that exist
iptables_leftovers() {
	local t chains
	chains=$(pod_chains | sort -u)
	for t in nat filter; do
		iptables-save -t "$t" | grep -F "name: \\\"$NET\\\"" | sed "s/^/$t /" || true
		iptables-save -t "$t" | sed -n 's/^:\([^ ]*\) .*/\1/p' | grep -Fxf <(echo "$chains") | sed "s/^/$t chain /" || true
	done
}

remove_iptables_leftovers() {
	local t kind rest
	while read -r t kind rest; do
		if [ "$kind" = chain ]; then
			iptables -w -t "$t" -F "$rest" && iptables -w -t "$t" -X "$rest"
		else # "-A CHAIN ..." as iptables-save quotes it: let the shell re-split it
			eval "iptables -w -t $t -D ${rest}"
		fi
	done < <(iptables_leftovers | sort -s -k2,2) # rules ("-A") first, then chains
}

# /run/netns entries that were not there before the run (containerd's cni-*)
new_netns() {
	comm -13 <(echo "$NETNS_BEFORE") <(netns_now) | sed '/^$/d'
}
# The per-runtime parent cgroups: runc puts containerd's pods under /k8s.io, cricket under /cricket
cgroup_parents() { find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d \( -name k8s.io -o -name cricket \) | sort; }

netns_now() { find /run/netns -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort; }

# --- per-pod processes and memory ---------------------------------------------

shims() { pids_with containerd-shim-runc-v2 "${SOCK[containerd]}"; }
pod_inits() { pids_with pod-init "$W/cricket/"; }

# "cricket: daemon RSS .. MiB; N pod-init RSS .. MiB (PSS ..) | containerd: ..."
memory_report() {
	local label=$1 n r s
	local -a sh pa pi
	mapfile -t pi < <(pod_inits)
	mapfile -t sh < <(shims)
	mapfile -t pa < <(children_of "${sh[@]}")
	printf 'memory %s: cricket daemon RSS %s MiB' "$label" "$(mib "$(rss_kib "${DPID[cricket]}")")"
	read -r n r s <<<"$(sum_mem "${pi[@]}")"
	printf ', %d pod-init RSS %s MiB (PSS %s)' "$n" "$r" "$s"
	printf '; containerd daemon RSS %s MiB' "$(mib "$(rss_kib "${DPID[containerd]}")")"
	read -r n r s <<<"$(sum_mem "${sh[@]}")"
	printf ', %d shims RSS %s MiB (PSS %s)' "$n" "$r" "$s"
	read -r n r s <<<"$(sum_mem "${pa[@]}")"
	printf ', %d pause RSS %s MiB (PSS %s)\n' "$n" "$r" "$s"
}

# --- pods -----------------------------------------------------------------------

# pod_config RUNTIME NAME: writes a plain pod config, prints its path
pod_config() {
	local f=$W/pods/$2.json
	cat >"$f" <<EOF
{
  "metadata": { "name": "$2", "namespace": "bench-pods", "uid": "$(basename "$W")-$2", "attempt": 0 },
  "linux": {}
}
EOF
	echo "$f"
}


# Each timed call appends microseconds to T_<kind>[runtime]; one `crictl version` next to it
declare -A T_RUN T_STOP T_VER
declare -A POD_ID # "runtime i" -> sandbox ID

run_pod() { # run_pod RUNTIME NAME: prints the sandbox ID
	cri "$1" runp "$(pod_config "$1" "$2")"
}

timed_run() { # timed_run RUNTIME I
	local rt=$1 i=$2 cfg id t0
	cfg=$(pod_config "$rt" "pod-${SHORT[$rt]}-$i")
	t0=$EPOCHREALTIME
	id=$(cri "$rt" runp "$cfg")
	T_RUN[$rt]+="$(us_since "$t0") "
	POD_ID["$rt $i"]=$id
	ALL_IDS+=("$id")
	IDS[$rt]+="$id "
	version_sample "$rt"
}

timed_stop() { # timed_stop RUNTIME I
	local rt=$1 id=${POD_ID["$1 $2"]} t0
	t0=$EPOCHREALTIME
	cri "$rt" stopp "$id" >/dev/null
	cri "$rt" rmp "$id" >/dev/null
	T_STOP[$rt]+="$(us_since "$t0") "
	version_sample "$rt"
}

warm_up() {
	local rt i id
	for rt in cricket containerd; do
		for ((i = 1; i <= WARMUP; i++)); do
			id=$(run_pod "$rt" "warmup-${SHORT[$rt]}-$i")
			ALL_IDS+=("$id")
			IDS[$rt]+="$id "
			cri "$rt" stopp "$id" >/dev/null
			cri "$rt" rmp "$id" >/dev/null
		done
	done
}

check_running() {
	local rt n veths
	for rt in cricket containerd; do
		n=$(cri "$rt" pods -q --state ready | wc -l)
		[ "$n" -eq "$PODS" ] || die "$rt: $n ready pods, expected $PODS"
	done
	veths=$(ip -o link show master "$BRIDGE" | wc -l)
	[ "$veths" -eq $((2 * PODS)) ] || die "$veths veths on $BRIDGE, expected $((2 * PODS))"
}

# --- leftovers ------------------------------------------------------------------

mounts_under() { awk -v d="$1" 'index($5, d) == 1' /proc/self/mountinfo | wc -l; }

# cgroups_left "ID ID ...": cgroup dirs (any v1 hierarchy or v2) named after one of the IDs
cgroups_left() {
	local re
	re=$(tr -s ' ' '\n' <<<"$1" | sed '/^$/d' | paste -sd'|')
	find /sys/fs/cgroup -mindepth 1 -maxdepth 4 -type d -regextype egrep -regex ".*/(pod-)?($re)(\.scope)?" 2>/dev/null | wc -l
}

report_leftovers() {
	local ck=$W/cricket ct=$W/containerd
	printf 'leftovers after removal (all should be 0):\n'
	printf '  cricket:    mounts under %s %d (pinned namespaces %d), pod-init %d, sandbox dirs %d, cgroups %s\n' \
		"$ck" "$(mounts_under "$ck/")" "$(awk -v d="$ck/" 'index($5, d) == 1 && $9 == "nsfs"' /proc/self/mountinfo | wc -l)" \
		"$(pod_inits | wc -l)" "$(find "$ck/root/sandboxes" "$ck/run/sandboxes" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)" \
		"$(cgroups_left "${IDS[cricket]}")"
	printf '  containerd: mounts under %s %d, netns in /run/netns %d, shims %d, cgroups %s\n' \
		"$ct" "$(mounts_under "$ct/")" "$(new_netns | wc -l)" "$(shims | wc -l)" "$(cgroups_left "${IDS[containerd]}")"
	printf '  network:    veths on %s %d, IPAM leases %d, iptables rules/chains of the pods %d\n' \
		"$BRIDGE" "$(ip -o link show master "$BRIDGE" | wc -l)" \
		"$(find "$W/cni/ipam/$NET" -type f ! -name lock ! -name 'last_reserved_ip*' 2>/dev/null | wc -l)" \
		"$(iptables_leftovers | wc -l)"
}

# --- teardown hooks (lib.sh's cleanup calls them) --------------------------------

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
	local ns
	[ -n "$NET" ] || return 0
	for ns in $(new_netns | grep '^cni-'); do # containerd's, if any survived
		umount "/run/netns/$ns" 2>/dev/null || umount -l "/run/netns/$ns"
		rm -f "/run/netns/$ns"
	done
	[ ${#FWD_RULE[@]} -eq 0 ] || iptables -w -D "${FWD_RULE[@]}" 2>/dev/null
	[ ${#ALL_IDS[@]} -eq 0 ] || remove_iptables_leftovers
	ip link del "$BRIDGE" 2>/dev/null
	# parent cgroups we caused, if empty now (rmdir fails on a cgroup with children)
	comm -13 <(echo "$CGROUPS_BEFORE") <(cgroup_parents) | sed '/^$/d' | xargs -r rmdir 2>/dev/null
	if [ -n "$FORWARD_WAS" ] && [ "$(cat /proc/sys/net/ipv4/ip_forward)" != "$FORWARD_WAS" ]; then
		echo "$FORWARD_WAS" >/proc/sys/net/ipv4/ip_forward
		log "net.ipv4.ip_forward restored to $FORWARD_WAS"
	fi
}

# --- summary ----------------------------------------------------------------------

# Daemon-side RunPodSandbox times of the timed pods, ms, one per line
cricket_log_ms() {
	sed 's/\x1b\[[0-9;]*m//g' "$W/cricket.log" | awk '/pod sandbox ready/ && / name=pod-ck-/' |
		sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p'
}
containerd_log_ms() { # time="…T12:34:56.123456789Z" … msg="RunPodSandbox for &PodSandboxMetadata{Name:pod-ct-7,…"
	awk '/msg="RunPodSandbox for &PodSandboxMetadata\{Name:pod-ct-/ {
		match($0, /T[0-9:.]+/); split(substr($0, RSTART + 1, RLENGTH - 1), hms, ":")
		t = hms[1] * 3600 + hms[2] * 60 + hms[3]
		match($0, /Name:[^,]*/); name = substr($0, RSTART, RLENGTH)
		if (/returns sandbox id/) { if (name in start) { d = t - start[name]; if (d < 0) d += 86400; printf "%.1f\n", d * 1000 } }
		else start[name] = t
	}' "$W/containerd.log"
}

summary() {
	local ck_ver ct_ver a b c d
	read -r ck_ver _ <<<"$(stats "${T_VER[cricket]}")"
	read -r ct_ver _ <<<"$(stats "${T_VER[containerd]}")"
	echo
	awk -v a="$ck_ver" -v b="$ct_ver" -v n="$((2 * PODS))" 'BEGIN {
		printf "crictl fixed cost (median of %d `crictl version` per runtime): cricket %.1f ms, containerd %.1f ms\n", n, a / 1000, b / 1000 }'

	read -r a b <<<"$(ms_stats "${T_RUN[cricket]}")"
	read -r c d <<<"$(ms_stats "${T_RUN[containerd]}")"
	line "RunPodSandbox ($PODS pods), raw crictl runp" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(med_p90 "$(cricket_log_ms | tr '\n' ' ')")"
	read -r c d <<<"$(med_p90 "$(containerd_log_ms | tr '\n' ' ')")"
	line "RunPodSandbox ($PODS pods), daemon logs" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(ms_stats "${T_STOP[cricket]}")"
	read -r c d <<<"$(ms_stats "${T_STOP[containerd]}")"
	line "StopPodSandbox+RemovePodSandbox, raw crictl stopp + rmp" "$a" "$b" "$c" "$d"

	echo "# below: crictl times minus crictl's fixed cost (once for runp, twice for stopp + rmp)"
	read -r a b <<<"$(ms_stats "${T_RUN[cricket]}" "$ck_ver")"
	read -r c d <<<"$(ms_stats "${T_RUN[containerd]}" "$ct_ver")"
	line "RunPodSandbox ($PODS pods)" "$a" "$b" "$c" "$d"
	read -r a b <<<"$(ms_stats "${T_STOP[cricket]}" "$(awk -v v="$ck_ver" 'BEGIN { print 2 * v }')")"
	read -r c d <<<"$(ms_stats "${T_STOP[containerd]}" "$(awk -v v="$ct_ver" 'BEGIN { print 2 * v }')")"
	line "StopPodSandbox+RemovePodSandbox ($PODS pods)" "$a" "$b" "$c" "$d"
}

# --- main -------------------------------------------------------------------------

main() {
	[ "$(id -u)" -eq 0 ] || die "run as root (namespaces, mounts, bridge, iptables)"
	[[ $PODS =~ ^[1-9][0-9]*$ ]] || die "PODS must be a positive integer"
	[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer"
	install_missing gcc=gcc /usr/include/stdio.h=libc6-dev iptables=iptables ip=iproute2 \
		"$CNI_BIN/bridge=containernetworking-plugins" "$CNI_BIN/host-local=containernetworking-plugins" \
		"$CNI_BIN/portmap=containernetworking-plugins"
	check_crictl
	local bin port image i
	bin=$(cricket_binary)

	setup_workdir pods
	mkdir -p "$W/pods" "$W/pause"
	NET=bench-$(basename "$W" | tr -dc 'a-zA-Z0-9' | tail -c 6)
	BRIDGE=crb${NET#bench-}
	SUBNET=$(pick_subnet)
	NETNS_BEFORE=$(netns_now)
	CGROUPS_BEFORE=$(cgroup_parents)
	write_cni_conf
	guard_forwarding
	log "network $NET: bridge $BRIDGE, subnet $SUBNET, config $CNI_CONF"

	port=$(free_port)
	start_registry "$port"
	gcc -static -O2 -s -o "$W/pause/pause" "$HERE/pause.c"
	image=$(python3 "$HERE/mkimage.py" --registry "127.0.0.1:$port" --repo bench/pause --tag 3.9 \
		--rootfs "$W/pause" --entrypoint /pause 2>"$W/mkimage.log")
	start_cricket "$bin" "$port" "$CNI_CONF" "$CNI_BIN"
	start_containerd "$port" "$CNI_CONF" "$CNI_BIN" "$image"
	cri containerd pull "$image" >/dev/null
	log "$("$bin" version 2>/dev/null | head -n1), $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR == 1 {print $3}'), $(crictl --version)"
	log "sandbox image for containerd: $image (pre-pulled)"

	log "warm-up: $WARMUP pod(s) per runtime"
	warm_up
	local idle
	idle=$(memory_report idle)

	log "RunPodSandbox x $PODS per runtime"
	for ((i = 1; i <= PODS; i++)); do in_turn timed_run "$i"; done
	check_running
	local busy
	busy=$(memory_report "with $PODS pods")

	log "StopPodSandbox + RemovePodSandbox x $PODS per runtime"
	for ((i = 1; i <= PODS; i++)); do in_turn timed_stop "$i"; done

	echo "$idle"
	echo "$busy"
	report_leftovers
	summary
}

main "$@"
