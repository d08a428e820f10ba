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

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

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

# pull RUNTIME: timed crictl pull; prints seconds
pull() {
	local t0=$EPOCHREALTIME
	cri "$1" pull "$IMAGE" >/dev/null
	elapsed "$t0"
}

# After a pull the store must hold the image: proves the emptiness checks see content.
check_present() { ! "${1}_empty" || die "$1: pull succeeded but its store looks empty"; }

# --- main --------------------------------------------------------------------

main() {
	[ "$(id -u)" -eq 0 ] || die "run as root (containerd's overlayfs snapshotter mounts)"
	[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
	# shellcheck disable=SC2119 # no extra packages
	install_missing
	check_crictl
	local bin port
	bin=$(cricket_binary)

	setup_workdir pull

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
	read -r ck_med ck_min _ <<<"$(stats "${times[cricket]}")"
	read -r ct_med ct_min _ <<<"$(stats "${times[containerd]}")"
	echo "cricket    pulls (s): ${times[cricket]}"
	echo "containerd pulls (s): ${times[containerd]}"
	if [ -s "$W/cricket.layers" ]; then # needs cricket=debug in CRICKET_LOG
		read -r l_med l_min _ <<<"$(stats "$(tr '\n' ' ' <"$W/cricket.layers")")"
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
