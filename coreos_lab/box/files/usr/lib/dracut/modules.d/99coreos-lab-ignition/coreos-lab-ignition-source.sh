#!/bin/sh
# Is this the machine's first boot (the root holds /boot/flatcar/first_boot)? If not, Ignition is skipped.
# If so, which fw_cfg name holds the config: opt/com.coreos/config is read by Debian's Ignition itself
# (platform qemu); a config only under Flatcar's opt/org.flatcar-linux/config is handed over as a file.
set -u
say() { echo "coreos-lab-ignition: $*"; }
root=$(sed -n 's/.*\(^\| \)root=\([^ ]*\).*/\2/p' /proc/cmdline)
[ -n "$root" ] || root=/dev/vda
n=0
while [ ! -b "$root" ] && [ "$n" -lt 1200 ]; do
    sleep 0.1
    n=$((n + 1))
done
mkdir -p /run/coreos-lab/root
first=no
if mount -o ro,noload "$root" /run/coreos-lab/root; then
    [ -e /run/coreos-lab/root/boot/flatcar/first_boot ] && first=yes
    umount /run/coreos-lab/root
else
    say "cannot mount $root to look for the first-boot flag; not running Ignition"
fi
if [ "$first" != yes ]; then
    touch /run/coreos-lab/ignition-skip
    say "not a first boot (no /boot/flatcar/first_boot): Ignition skipped"
    exit 0
fi
modprobe qemu_fw_cfg 2>/dev/null || true
fw=/sys/firmware/qemu_fw_cfg/by_name/opt
if [ -e "$fw/com.coreos/config/raw" ]; then
    say "first boot: config from fw_cfg opt/com.coreos/config (platform qemu)"
elif [ -e "$fw/org.flatcar-linux/config/raw" ]; then
    cp "$fw/org.flatcar-linux/config/raw" /run/coreos-lab/config.ign
    printf 'PLATFORM_ID=file\nIGNITION_CONFIG_FILE=/run/coreos-lab/config.ign\n' > /run/ignition.env
    say "first boot: config from fw_cfg opt/org.flatcar-linux/config"
else
    say "first boot: no Ignition config in fw_cfg (cloud-config provisions this node)"
fi
