#!/bin/sh
# Boots a Debian 12 virtual machine with Backstop installed as a service from a
# `make install` tree, and plays a scenario in it across real reboots and kernel panics.
#
# Usage: run-scenario.sh INSTALL_TREE SCENARIO OUT_DIR [MAX_BOOTS]
#   INSTALL_TREE  the DESTDIR of `make install`
#   SCENARIO      what the first boot does after staging and promoting known-good content
#                 (guest.sh has the list)
#   OUT_DIR       receives console-N.log (the serial console of boot N) and results.log
#                 (what the guest reports on its second serial port: status, boots,
#                 history, as `vm-result KEY` sections)
#   MAX_BOOTS     boots before giving up [4]
#
# The base image is built once from Debian packages and cached in
# $BACKSTOP_VM_CACHE (default .build-vm in the repository); each run boots a qcow2
# overlay of it, so the cache stays clean. The machine boots its kernel directly with
# panic=1 and -no-reboot: a panic or a reboot ends QEMU, and this script starts the next
# boot, until the guest reports its results and powers off. KVM is used where it boots
# Debian's kernel; QEMU's software emulation (TCG) otherwise.
# Exits 0 when the guest reported its results, 1 otherwise; no QEMU outlives it.
set -eu

install_tree=$1
scenario=$2
out=$3
max_boots=${4:-4}
here=$(cd "$(dirname "$0")" && pwd)
cache=${BACKSTOP_VM_CACHE:-$here/../../.build-vm}
boot_timeout=${BACKSTOP_VM_BOOT_TIMEOUT:-300}

base=$("$here/build-base-image.sh" "$cache")
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/backstop-vm.XXXXXX")
qemu_pid=""
cleanup() {
    if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# The provisioning disk: the install tree, the guest's script and its files.
mkdir -p "$work/provision"
cp -a "$install_tree" "$work/provision/install"
cp -a "$here/guest/." "$work/provision/"
echo "$scenario" > "$work/provision/scenario"
mke2fs -q -t ext4 -L provision -d "$work/provision" "$work/provision.img" 256M >/dev/null
qemu-img create -q -f qcow2 -F raw -b "$(cd "$base" && pwd)/rootfs.img" "$work/root.qcow2"

# One machine ID for every boot: the base image has none, and a machine whose first boot
# crashes before systemd commits the one it made up would get another at the next boot,
# and so another journal directory.
machine_id=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
kernel_args="root=LABEL=root rw console=ttyS0 panic=1 edd=off systemd.show_status=0 loglevel=4 systemd.machine_id=$machine_id"

# Runs QEMU in the background with the accelerator $1 and extra arguments; sets qemu_pid.
start_qemu() {
    accelerator=$1; shift
    qemu-system-x86_64 -nodefaults -display none -no-reboot -accel "$accelerator" -m 1024 -smp 1 \
        -kernel "$base/vmlinuz" -initrd "$base/initrd.img" "$@" &
    qemu_pid=$!
}

# Waits for QEMU to end, at most $1 seconds; returns 1 (and stops it) on timeout.
wait_qemu() {
    deadline=$(( $(date +%s) + $1 ))
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            kill "$qemu_pid" 2>/dev/null || true
            wait "$qemu_pid" 2>/dev/null || true
            qemu_pid=""
            return 1
        fi
        sleep 1
    done
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=""
}

# KVM only where it boots this kernel: a boot without a root disk reaches the
# initramfs within seconds under KVM; a device that cannot run it aborts or hangs.
accel=tcg
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    start_qemu kvm -append "console=ttyS0 panic=1 edd=off rdinit=/bin/false" -serial "file:$work/probe.log" 2>/dev/null
    wait_qemu 10 || true
    if grep -q "Run /bin/false as init process\|Kernel panic - not syncing: Attempted to kill init" "$work/probe.log" 2>/dev/null; then
        accel=kvm
    fi
fi
echo "VM: $accel, scenario $scenario" >&2

boot=1
: > "$out/results.log"
while [ "$boot" -le "$max_boots" ]; do
    started=$(date +%s)
    start_qemu "$accel" -append "$kernel_args" \
        -drive "file=$work/root.qcow2,if=virtio,format=qcow2" \
        -drive "file=$work/provision.img,if=virtio,format=raw,readonly=on" \
        -serial "file:$out/console-$boot.log" -serial "file:$work/results-$boot.log"
    if ! wait_qemu "$boot_timeout"; then
        echo "VM: boot $boot did not end within $boot_timeout s (console: $out/console-$boot.log)" >&2
        exit 1
    fi
    cat "$work/results-$boot.log" >> "$out/results.log"
    ended=$(grep -c "Kernel panic" "$out/console-$boot.log" || true)
    echo "VM: boot $boot ended after $(( $(date +%s) - started )) s$( [ "$ended" -gt 0 ] && echo ', kernel panic')" >&2
    if grep -q "^vm-result end" "$work/results-$boot.log"; then
        exit 0
    fi
    boot=$((boot + 1))
done
echo "VM: no results after $max_boots boots" >&2
exit 1
