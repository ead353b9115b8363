#!/bin/sh
# Builds the base image of the virtual-machine tests from Debian packages only:
# a Debian 12 root file system (mmdebstrap) as an ext4 image (mke2fs -d, no loop
# mount), with the kernel and initrd beside it for a direct kernel boot. Nothing of
# Backstop is in it: each run brings Backstop on a provisioning disk of its own
# (see run-scenario.sh), so one base image serves every build.
#
# Usage: build-base-image.sh CACHE_DIR
# Prints the directory of the base image (CACHE_DIR/base-<key>), which holds
# rootfs.img, vmlinuz and initrd.img. The key is a digest of this script, so a change
# to what goes into the image builds a new one; an existing complete one is reused.
set -eu

cache_dir=$1
here=$(cd "$(dirname "$0")" && pwd)
key=$(sha256sum "$here/build-base-image.sh" | cut -c1-16)
base="$cache_dir/base-$key"
if [ -f "$base/complete" ]; then
    echo "$base"
    exit 0
fi

# systemd and bubblewrap for Backstop; the agent is a shell script; udev so that the
# virtio disks get their /dev/disk links; the libraries backstopd links dynamically.
packages="systemd,systemd-sysv,udev,dbus,bubblewrap,linux-image-amd64,initramfs-tools,libsystemd0,libarchive13,libstdc++6,libgcc-s1,e2fsprogs"

rm -rf "$base.tmp"
mkdir -p "$base.tmp"
rootfs="$base.tmp/rootfs"
echo "Building the base image of the VM tests in $base (Debian 12 from deb.debian.org)" >&2
mmdebstrap --quiet --mode=root --variant=minbase --include="$packages" \
    --customize-hook='echo backstop-vm > "$1/etc/hostname"' \
    --customize-hook='printf "LABEL=root / ext4 rw,errors=remount-ro 0 1\n" > "$1/etc/fstab"' \
    --customize-hook='mkdir -p "$1/var/log/journal"' \
    --customize-hook='chroot "$1" passwd -d root' \
    --customize-hook='chroot "$1" systemctl mask systemd-networkd-wait-online.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer' \
    --customize-hook='cp "$1"/boot/vmlinuz-* "'"$base.tmp"'/vmlinuz" && cp "$1"/boot/initrd.img-* "'"$base.tmp"'/initrd.img"' \
    bookworm "$rootfs" http://deb.debian.org/debian >&2

# The provisioning disk: each run's own, with LABEL=provision; its run.sh runs on every
# boot after local file systems are up.
cat > "$rootfs/etc/systemd/system/vm-provision.service" <<'UNIT'
[Unit]
Description=Run the provisioning disk's run.sh
DefaultDependencies=no
After=local-fs.target systemd-journald.socket
Wants=dev-disk-by\x2dlabel-provision.device
After=dev-disk-by\x2dlabel-provision.device
Before=basic.target

[Service]
Type=simple
ExecStart=/bin/sh -c 'mkdir -p /run/provision && mount -o ro LABEL=provision /run/provision && exec /bin/sh /run/provision/run.sh'
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=sysinit.target
UNIT
chroot "$rootfs" systemctl enable vm-provision.service >&2

mke2fs -q -t ext4 -L root -d "$rootfs" "$base.tmp/rootfs.img" 2G >&2
rm -rf "$rootfs"
mv "$base.tmp" "$base"
touch "$base/complete"
echo "$base"
