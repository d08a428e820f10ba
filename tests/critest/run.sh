#!/usr/bin/env bash
# CRI conformance: runs critest (cri-tools v1.32) against a private cricket.
#
#   tests/critest/run.sh                               # every spec
#   FOCUS='Image Manager|PodSandbox' tests/critest/run.sh
#
# Needs root on Debian bookworm, and critest + crictl on PATH. Installs the
# Debian packages it uses when missing, builds cricket (or takes CRICKET_BIN),
# starts a docker-registry on a free 127.0.0.1 port holding every image
# critest pulls (built by images.py), and runs cricket with its own state,
# socket, CNI network (bridge crt<hex>, a free 10.x.y.0/24) and registry
# mirrors for every public registry critest names (mirrors_only: nothing is
# looked up off the machine). Specs listed in skip.txt are skipped.
#
# Environment:
#   FOCUS                 regex for -ginkgo.focus
#   HANDLER=PATH          run every pod on an OCI runtime handler (e.g. /usr/sbin/runc)
#                         instead of the built-in executor
#   CRICKET_BIN           use this cricket binary instead of building one
#   CRITEST_REGISTRY_DIR  registry storage kept across runs (default: temp)
#   KEEP=1                keep the work directory (config, logs, reports)
#
# Last line: "N passed, M failed, K skipped". Exit status: 0 when no spec
# failed, 1 otherwise (or when the harness itself failed or left something
# behind), 2 when critest or crictl is missing. Everything it created is
# removed on exit (pods, cricket, bridge, iptables rules, registry, temp dirs)
# and ip_forward is put back as it was.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SKIP_FILE=$HERE/skip.txt
CRITEST_PORTS="12000-12003" # host ports critest's specs bind
FORWARDING=(/proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding)

log() { printf '[critest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (mounts, namespaces, cgroups, CNI)"

# --- tools that can't be apt-installed ---------------------------------------
for tool in critest crictl; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		cat >&2 <<EOF
$tool not found on PATH. Both come from kubernetes-sigs/cri-tools v1.32:
  git clone -b v1.32.0 https://github.com/kubernetes-sigs/cri-tools && cd cri-tools
  go test -c ./cmd/critest -o /usr/local/bin/critest     # critest
  go build -o /usr/local/bin/crictl ./cmd/crictl          # crictl
(or unpack critest-v1.32.0-linux-amd64.tar.gz / crictl-v1.32.0-linux-amd64.tar.gz
from the cri-tools release page into /usr/local/bin).
EOF
		exit 2
	fi
done

# --- Debian packages ---------------------------------------------------------
# busybox itself is fetched by images.py with `apt-get download` (installing
# the package would remove busybox-static, which tests/run.sh installs).
packages=(docker-registry gcc libc6-dev binutils python3 curl containernetworking-plugins
	iptables iproute2 util-linux protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing: ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v ipcmk >/dev/null || die "ipcmk (util-linux) not found; critest's IPC specs need it"

# --- preconditions -------------------------------------------------------------
busy=$(ss -Hltun "( sport >= :${CRITEST_PORTS%-*} and sport <= :${CRITEST_PORTS#*-} )" || true)
[ -z "$busy" ] || die "host ports $CRITEST_PORTS must be free for critest; in use:
$busy"

# skip.txt: "REGEX # reason" per line
skips=()
while IFS= read -r line || [ -n "$line" ]; do
	case $line in '' | '#'*) continue ;; esac
	[[ $line == *' # '* ]] || die "$SKIP_FILE: no ' # reason' in: $line"
	re=${line%% # *}
	re=${re%"${re##*[![:space:]]}"}
	skips+=("$re")
done <"$SKIP_FILE"

# --- cricket binary ----------------------------------------------------------
if [ -n "${CRICKET_BIN:-}" ]; then
	BIN=$(realpath "$CRICKET_BIN")
else
	log "building cricket (cargo build --release)"
	(cd "$ROOT" && cargo build --release --locked --quiet)
	target=${CARGO_TARGET_DIR:-target}
	[[ $target == /* ]] || target=$ROOT/$target
	BIN=$target/release/cricket
fi
[ -x "$BIN" ] || die "no cricket binary at $BIN"

# --- state, and the cleanup that undoes it -------------------------------------
W=$(mktemp -d /tmp/cricket-critest.XXXXXX)
chmod 0755 "$W"
SOCK=$W/cricket.sock
REG_DIR=${CRITEST_REGISTRY_DIR:-$W/registry}
CRICKET_PID=
REGISTRY_PID=
CRITEST_PID=
TAIL_PID=
BRIDGE=
NET_NAME=
SUBNET=
PREFIX=
hostport_chains_existed=0
iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 && hostport_chains_existed=1
saved_forwarding=()
for f in "${FORWARDING[@]}"; do saved_forwarding+=("$(cat "$f" 2>/dev/null || true)"); done
crictl_() { crictl --config "$W/crictl.yaml" "$@"; }

# stop_pid PID NAME [SECONDS]: SIGTERM, wait (20 s), then SIGKILL
stop_pid() {
	local pid=$1 name=$2 secs=${3:-20} i
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < secs * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

# ipt_sweep TABLE: deletes what the CNI plugins left in TABLE for this run's
# network (CNI DEL should have removed it): rules naming its subnet or name,
# and the CNI-* chains (portmap's shared CNI-HOSTPORT-* aside) holding such
# rules, with every jump to them. -S output is quoted for a shell.
ipt_sweep() {
	local table=$1 dump rule chain target doomed=" "
	dump=$(iptables -t "$table" -S 2>/dev/null) || return 0
	while IFS= read -r rule; do
		chain=${rule#-A }
		chain=${chain%% *}
		if [[ $chain == CNI-* && $chain != CNI-HOSTPORT-* && $doomed != *" $chain "* ]] &&
			[[ $rule == *"$PREFIX"* || $rule == *"$NET_NAME"* ]]; then
			doomed+="$chain "
		fi
	done < <(grep '^-A ' <<<"$dump")
	while IFS= read -r rule; do
		chain=${rule#-A }
		chain=${chain%% *}
		target=
		[[ $rule == *' -j '* ]] && target=${rule##* -j } && target=${target%% *}
		[[ $doomed == *" $chain "* ]] && continue
		if [[ $rule == *"$PREFIX"* || $rule == *"$NET_NAME"* || $doomed == *" $target "* ]]; then
			CRICKET_LEFT+=" iptables:$table:'$rule'"
			eval "iptables -t $table -D ${rule#-A }" || log "could not delete: iptables -t $table $rule"
		fi
	done < <(grep '^-A ' <<<"$dump")
	for chain in $doomed; do
		CRICKET_LEFT+=" iptables:$table:$chain"
		if ! { iptables -t "$table" -F "$chain" && iptables -t "$table" -X "$chain"; }; then
			log "could not remove chain $table/$chain"
		fi
	done
}

# portmap's shared chains, when this run made them and no pod uses them now
drop_hostport_chains() {
	local dump rule chain
	[ "$hostport_chains_existed" = 0 ] || return 0
	dump=$(iptables -t nat -S 2>/dev/null) || return 0
	grep -q '^-N CNI-HOSTPORT-' <<<"$dump" || return 0
	grep -q '^-A CNI-HOSTPORT-DNAT ' <<<"$dump" && return 0
	while IFS= read -r rule; do
		eval "iptables -t nat -D ${rule#-A }" || true
	done < <(grep -E '^-A .* -j CNI-HOSTPORT-' <<<"$dump" | grep -v '^-A CNI-HOSTPORT-')
	while IFS= read -r chain; do
		iptables -t nat -F "$chain" && iptables -t nat -X "$chain"
	done < <(sed -n 's/^-N \(CNI-HOSTPORT-.*\)/\1/p' <<<"$dump")
	return 0
}

# Cgroups of the pods this cricket made (any 64-hex ID in its log): under
# each hierarchy's cricket/ (the default parent) or wherever critest put them.
pod_cgroups() {
	[ -s "$W/cricket.log" ] || return 0
	grep -aoE '[0-9a-f]{64}' "$W/cricket.log" | sort -u >"$W/ids"
	[ -s "$W/ids" ] || return 0
	find /sys/fs/cgroup -mindepth 2 -maxdepth 6 -type d 2>/dev/null | grep -F -f "$W/ids" || true
}

# PIDs of processes with the work directory on their command line
procs_in_w() {
	local f pid argv
	for f in /proc/[0-9]*/cmdline; do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		[ "$pid" = $$ ] && continue
		mapfile -d '' -t argv 2>/dev/null <"$f" || continue
		[[ "${argv[*]}" == *"$W"* ]] && echo "$pid"
	done
	return 0
}

leftovers() {
	local out=
	grep -F "$W" /proc/self/mountinfo >/dev/null && out+=" mounts:$(grep -cF "$W" /proc/self/mountinfo)"
	[ -n "$(pod_cgroups)" ] && out+=" cgroups:$(pod_cgroups | wc -l)"
	[ -n "$(procs_in_w)" ] && out+=" processes:$(procs_in_w | wc -l)"
	[ -n "$BRIDGE" ] && ip link show dev "$BRIDGE" >/dev/null 2>&1 && out+=" bridge:$BRIDGE"
	[ -n "$PREFIX" ] && iptables-save 2>/dev/null | grep -qF -e "$PREFIX" -e "$NET_NAME" && out+=" iptables"
	printf '%s' "$out"
}

CLEANED=0
CRICKET_LEFT= # what cricket failed to tear down after `crictl rmp -fa` and SIGTERM
LEFT_BEHIND=  # what even the harness's own sweep could not remove
cleanup() {
	[ "$CLEANED" = 1 ] && return 0
	CLEANED=1
	set +e
	if [ -n "$CRITEST_PID" ]; then
		log "interrupted: stopping critest"
		stop_pid "$CRITEST_PID" critest 40
	fi
	[ -z "$TAIL_PID" ] || kill "$TAIL_PID" 2>/dev/null
	if [ -n "$CRICKET_PID" ] && kill -0 "$CRICKET_PID" 2>/dev/null; then
		timeout 120 "$(command -v crictl)" --config "$W/crictl.yaml" rmp -fa >/dev/null 2>&1 ||
			log "crictl rmp -fa failed"
	fi
	stop_pid "$CRICKET_PID" cricket
	stop_pid "$REGISTRY_PID" registry
	# what a failed teardown may have left: pod processes and cgroups, mounts
	local cg pid m
	for cg in $(pod_cgroups | sort -r); do
		CRICKET_LEFT+=" cgroup:$cg"
		while read -r pid; do kill -KILL "$pid" 2>/dev/null; done <"$cg/cgroup.procs"
	done
	for pid in $(procs_in_w); do
		CRICKET_LEFT+=" process:$pid($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))"
		kill -KILL "$pid" 2>/dev/null
	done
	sleep 0.2
	for cg in $(pod_cgroups | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-); do rmdir "$cg" 2>/dev/null; done
	while read -r m; do
		CRICKET_LEFT+=" mount:$m"
		umount -l "$m"
	done < <(awk -v w="$W" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
	# network
	if [ -n "$BRIDGE" ]; then
		for m in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
			CRICKET_LEFT+=" veth:$m"
			ip link del "$m"
		done
		ip link del "$BRIDGE" 2>/dev/null
		iptables -D FORWARD -s "$SUBNET" ! -o "$BRIDGE" -j DROP -m comment --comment "$NET_NAME: pods stay local" 2>/dev/null
		ipt_sweep nat
		ipt_sweep filter
		drop_hostport_chains
	fi
	local i
	for i in "${!FORWARDING[@]}"; do
		[ -n "${saved_forwarding[$i]}" ] && echo "${saved_forwarding[$i]}" >"${FORWARDING[$i]}"
	done
	[ -z "$CRICKET_LEFT" ] || log "cricket left behind (removed now):$CRICKET_LEFT"
	LEFT_BEHIND=$(leftovers)
	[ -z "$LEFT_BEHIND" ] || log "LEFT BEHIND on this machine:$LEFT_BEHIND"
	if [ "${KEEP:-0}" = 1 ]; then
		rm -rf "$W/root" "$W/run" "$W/build" "$W/registry"
		log "kept logs, config and reports in $W"
	else
		rm -rf "$W"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- registry ------------------------------------------------------------------
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=5000
while [ "$PORT" = 5000 ] || { [ "$PORT" -ge 12000 ] && [ "$PORT" -le 12003 ]; }; do PORT=$(free_port); done
REGISTRY=127.0.0.1:$PORT
mkdir -p "$REG_DIR"
cat >"$W/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REG_DIR
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $REGISTRY
EOF
setsid docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 </dev/null &
REGISTRY_PID=$!
for ((i = 0; i < 100; i++)); do
	curl -fs -o /dev/null "http://$REGISTRY/v2/" && break
	kill -0 "$REGISTRY_PID" 2>/dev/null || die "registry exited: $(cat "$W/registry.log")"
	sleep 0.1
done
curl -fs -o /dev/null "http://$REGISTRY/v2/" || die "registry on $REGISTRY did not come up"
log "registry on $REGISTRY (storage $REG_DIR)"
python3 "$HERE/images.py" --registry "$REGISTRY" --work "$W/build" --quiet

# --- CNI network -----------------------------------------------------------------
in_use="$(ip -4 addr) $(ip -4 route show table all)"
for ((i = 0; i < 1000; i++)); do
	b=$((100 + RANDOM % 100)) c=$((RANDOM % 256))
	[[ $in_use == *"10.$b.$c."* ]] || break
done
[[ $in_use != *"10.$b.$c."* ]] || die "no free 10.x.y.0/24 subnet"
tag=$(printf '%06x' $((RANDOM * 32768 + RANDOM)) | tail -c 6)
BRIDGE=crt$tag
NET_NAME=cricket-critest-$tag
SUBNET=10.$b.$c.0/24
PREFIX=10.$b.$c.
mkdir -p "$W/cni/net.d" "$W/cni/ipam" "$W/cricket.d"
cat >"$W/cni/net.d/10-critest.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NET_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$SUBNET", "gateway": "${PREFIX}1" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$W/cni/ipam"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
# Pod traffic stays on this machine: nothing from the pod subnet is forwarded
# to any interface but the pods' bridge.
iptables -I FORWARD -s "$SUBNET" ! -o "$BRIDGE" -j DROP -m comment --comment "$NET_NAME: pods stay local"
log "CNI network $NET_NAME: bridge $BRIDGE, $SUBNET"

# --- cricket ---------------------------------------------------------------------
{
	printf 'socket = "%s"\nroot = "%s"\nrun = "%s"\n\n' "$SOCK" "$W/root" "$W/run"
	printf '[log]\nlevel = "info"\n\n[cgroup]\ndriver = "cgroupfs"\n\n'
	printf '[registries]\ndefault = "docker.io"\nauth_file = ""\n\n'
	for host in registry.k8s.io gcr.io docker.io quay.io ghcr.io public.ecr.aws; do
		printf '[registries.hosts."%s"]\nmirrors = ["http://%s"]\nmirrors_only = true\n\n' "$host" "$REGISTRY"
	done
	printf '[cni]\nconf_dir = "%s"\nbin_dirs = ["/usr/lib/cni"]\n' "$W/cni/net.d"
	if [ -n "${HANDLER:-}" ]; then
		printf '\n[runtimes.oci]\ntype = "oci"\npath = "%s"\n' "$HANDLER"
	fi
} >"$W/cricket.toml"
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n' "$SOCK" "$SOCK" >"$W/crictl.yaml"

# CRICKET_* variables of the caller would override the file (or be unknown keys)
env_unset=()
while IFS= read -r v; do env_unset+=(-u "$v"); done < <(compgen -e | grep '^CRICKET_' || true)
env "${env_unset[@]}" setsid "$BIN" --config "$W/cricket.toml" --config-dir "$W/cricket.d" serve \
	>"$W/cricket.log" 2>&1 </dev/null &
CRICKET_PID=$!
for ((i = 0; i < 300; i++)); do
	[ -S "$SOCK" ] && crictl_ version >/dev/null 2>&1 && break
	kill -0 "$CRICKET_PID" 2>/dev/null || die "cricket exited: $(tail -n 20 "$W/cricket.log")"
	sleep 0.1
done
crictl_ version >/dev/null 2>&1 || die "cricket did not serve on $SOCK within 30 s"
log "cricket $("$BIN" version 2>/dev/null | head -n1) serving on $SOCK (pid $CRICKET_PID)"

# --- critest -----------------------------------------------------------------------
args=(
	--runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK"
	-ginkgo.flake-attempts=1 -ginkgo.no-color -ginkgo.timeout=30m
	-ginkgo.junit-report="$W/junit.xml" -ginkgo.json-report="$W/report.json"
)
for re in "${skips[@]}"; do args+=("-ginkgo.skip=$re"); done
[ -z "${FOCUS:-}" ] || args+=("-ginkgo.focus=$FOCUS")
[ -z "${HANDLER:-}" ] || args+=(-runtime-handler=oci)
log "critest ${FOCUS:+(focus: $FOCUS) }with ${#skips[@]} skip(s) from skip.txt; log: $W/critest.log"
# In the background, so a SIGTERM to this script is handled at once (cleanup
# interrupts critest first, giving it ginkgo's grace period for its own).
crit_rc=0
: >"$W/critest.log"
(cd "$W" && exec critest "${args[@]}") >"$W/critest.log" 2>&1 </dev/null &
CRITEST_PID=$!
tail -n +1 -f --pid="$CRITEST_PID" "$W/critest.log" &
TAIL_PID=$!
wait "$CRITEST_PID" || crit_rc=$?
CRITEST_PID=
wait "$TAIL_PID" || true
TAIL_PID=
log "critest exited with $crit_rc"

# --- result ------------------------------------------------------------------------
summary=$(grep -aoE '[0-9]+ Passed \| [0-9]+ Failed \| [0-9]+ Pending \| [0-9]+ Skipped' "$W/critest.log" | tail -n1 || true)
failed_names=$(python3 - "$W/report.json" <<'EOF' 2>/dev/null || true
import json, sys
for suite in json.load(open(sys.argv[1])):
    for s in suite.get("SpecReports") or []:
        if s.get("LeafNodeType") == "It" and s.get("State") not in ("passed", "skipped", "pending"):
            print(" ".join(s.get("ContainerHierarchyTexts") or []) + " " + s.get("LeafNodeText", ""))
EOF
)
cleanup

if [ -n "$summary" ]; then
	read -r passed failed skipped < <(sed -E 's/([0-9]+) Passed \| ([0-9]+) Failed \| [0-9]+ Pending \| ([0-9]+) Skipped/\1 \2 \3/' <<<"$summary")
else
	log "no ginkgo summary in critest's output (critest exit status $crit_rc)"
	passed=0 failed=$(grep -c . <<<"$failed_names" || true) skipped=0
	[ "$failed" -gt 0 ] || failed=1
fi
if [ -n "$failed_names" ]; then
	echo "Failed specs:"
	while IFS= read -r name; do echo "  $name"; done <<<"$failed_names"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ] && [ -n "$summary" ] && [ -z "$CRICKET_LEFT$LEFT_BEHIND" ]
