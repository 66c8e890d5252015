#!/usr/bin/env bash
# The README's main job: from a fresh Debian 12 machine to a healthy 3-node lab on real VMs.
#
#   sudo scripts/lab.sh [LAB_DIR]       (default LAB_DIR: ~/coreos-lab/lab; COREOS_LAB_INSTANCES=3)
#
# Installs what is needed (scripts/setup.sh), builds the offline lab box and adds it to Vagrant, starts
# the VM rig when no libvirtd runs here (no systemd, CI, containers), then init -> up -> status. Re-running
# it reuses the cached box, a running rig and an existing lab.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
LAB=$(realpath -m "${1:-${COREOS_LAB_DIR:-$HOME/coreos-lab/lab}}")
INSTANCES=${COREOS_LAB_INSTANCES:-3}
CL=$REPO/.venv/bin/coreos-lab
say() { printf '\n== %s\n' "$*" >&2; }

[[ $(id -u) == 0 ]] || { echo "lab.sh: error: needs root (apt packages, box build, libvirt); run: sudo $0 $*" >&2; exit 1; }

say "setup: apt packages and the venv"
bash scripts/setup.sh

say "box: build (cached by recipe) and add to Vagrant as coreos-lab/lab"
"$CL" box build --add

RUN=()
if scripts/vm-rig status >/dev/null 2>&1; then
    say "rig: already running"
    RUN=("$REPO/scripts/vm-rig" exec)
elif pgrep -x libvirtd >/dev/null; then
    say "rig: not needed, a libvirtd runs on this host"
else
    say "rig: no libvirtd here; starting libvirt inside the rig's network namespace"
    scripts/vm-rig start
    RUN=("$REPO/scripts/vm-rig" exec)
fi

if [[ -f $LAB/coreos-lab.toml ]]; then
    say "init: reusing the lab in $LAB"
else
    say "init: $INSTANCES nodes in $LAB"
    mkdir -p "$(dirname "$LAB")"
    "$CL" init "$LAB" --instances "$INSTANCES" --provider libvirt --box coreos-lab/lab --bootstrap static
fi

say "up: booting the VMs and waiting for a healthy etcd cluster (minutes on software emulation)"
(cd "$LAB" && "${RUN[@]}" "$CL" up)

if "$CL" status --help >/dev/null 2>&1; then
    say "status"
    (cd "$LAB" && "${RUN[@]}" "$CL" status) || true
fi

PREFIX=""
[[ ${#RUN[@]} -gt 0 ]] && PREFIX="$REPO/scripts/vm-rig exec "
cat <<EOF2

The lab is up in $LAB.
  reach it:     cd $LAB && ${PREFIX}$CL ssh core-01
                cd $LAB && ${PREFIX}$CL etcd members
  tear it down: cd $LAB && ${PREFIX}$CL destroy$( [[ -n $PREFIX ]] && printf '\n                %s' "$REPO/scripts/vm-rig stop")
EOF2
