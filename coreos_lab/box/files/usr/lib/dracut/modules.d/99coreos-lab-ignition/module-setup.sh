#!/bin/bash
# coreos-lab's twin of Flatcar's first-boot Ignition, on Debian's Ignition (dracut module 30ignition).
#
# Flatcar runs Ignition from its initramfs on the first boot only (GRUB sees /boot/flatcar/first_boot) and
# reads its config from QEMU fw_cfg under opt/org.flatcar-linux/config or opt/com.coreos/config. The lab box
# boots its kernel directly (vagrant-libvirt, one fixed command line with ignition.firstboot) and this initrd
# only when the node is handed an Ignition config (the box's Vagrantfile; cloud-config nodes boot initramfs-tools'
# small initrd), so the first-boot decision moves here:
#   coreos-lab-ignition-source  mounts the root read-only: no /boot/flatcar/first_boot -> every Ignition
#                               stage is skipped (a drop-in conditions them); else picks the config: Debian's
#                               qemu platform reads opt/com.coreos/config itself, a config only under Flatcar's
#                               name goes through Ignition's file platform.
#   coreos-lab-ignition-presets after the files stage: enables/disables what Ignition's preset file names
#                               (systemd applies presets only on a machine's first boot, and the box's empty
#                               machine-id is not one), then removes the first-boot flag.
# Debian's Ignition relabels for SELinux after writing files; the box has no SELinux (its /etc/selinux/config
# says disabled), so a no-op setfiles stands in for the real one in the initramfs.

check() {
    return 0
}

depends() {
    echo ignition
}

install() {
    inst_multiple mount umount mkdir cp rm touch sleep sed modprobe systemctl
    inst_script "$moddir/coreos-lab-ignition-source.sh" /usr/libexec/coreos-lab-ignition-source
    inst_script "$moddir/coreos-lab-ignition-presets.sh" /usr/libexec/coreos-lab-ignition-presets
    if ! command -v setfiles >/dev/null 2>&1; then
        inst_script "$moddir/setfiles.sh" /usr/sbin/setfiles
        chmod 0755 "$initdir/usr/sbin/setfiles"
    fi
    # The box's files are copied 0644 (whatever the checkout's modes): make ours executable in the initramfs.
    chmod 0755 "$initdir/usr/libexec/coreos-lab-ignition-source" "$initdir/usr/libexec/coreos-lab-ignition-presets"
    for unit in coreos-lab-ignition-source.service coreos-lab-ignition-presets.service; do
        inst_simple "$moddir/$unit" "$systemdsystemunitdir/$unit"
        mkdir -p "$initdir/$systemdsystemunitdir/ignition-complete.target.requires"
        ln_r "../$unit" "$systemdsystemunitdir/ignition-complete.target.requires/$unit"
    done
    for stage in fetch-offline fetch kargs disks mount files remount-sysroot; do
        inst_simple "$moddir/10-coreos-lab-first-boot.conf" \
            "$systemdsystemunitdir/ignition-$stage.service.d/10-coreos-lab-first-boot.conf"
    done
}
