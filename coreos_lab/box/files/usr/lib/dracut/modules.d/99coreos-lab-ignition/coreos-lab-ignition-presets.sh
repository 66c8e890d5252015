#!/bin/sh
# Ignition's files stage leaves its unit choices as presets (/etc/systemd/system-preset/*ignition*.preset);
# systemd would apply them only on a first boot by machine-id, which the box's is not: apply them here, on the
# root being prepared. Then the first boot is over.
set -eu
# A unit that also has a SysV script (docker: /etc/init.d/docker) makes systemctl call systemd-sysv-install,
# which the initramfs lacks (seen on the VM rig: the first boot of a node with docker enabled stopped here).
# The box boots with systemd only, so the SysV side has nothing to do.
export SYSTEMCTL_SKIP_SYSV=1
for preset in /sysroot/etc/systemd/system-preset/*ignition*.preset; do
    [ -e "$preset" ] || continue
    while read -r verb unit _rest; do
        case "$verb" in
            enable) systemctl --root=/sysroot enable "$unit" ;;
            disable) systemctl --root=/sysroot disable "$unit" ;;
        esac
    done < "$preset"
done
rm -f /sysroot/boot/flatcar/first_boot
echo "coreos-lab-ignition: presets applied; first boot done"
