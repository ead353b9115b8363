#!/bin/sh
# Runs on every boot of the virtual machine (vm-provision.service), from the
# provisioning disk. The first boot installs Backstop from the install tree as a
# service, stages and promotes known-good content, then plays the scenario:
#   content-panic    activates content that crashes the kernel when the agent starts
#   preflight-panic  activates content whose preflight crashes the kernel, and again
#                    at every later boot (as an updater retrying would)
#   after-promotion  activates content that crashes the kernel 20 s after the agent
#                    starts, and promotes it at once
# Later boots wait until Backstop has broken the loop (the agent running on the
# known-good version, the bad one quarantined) or for 90 s (content that crashes the
# kernel does so well before), then report on the second serial port and power off.
set -u
provision=/run/provision
scenario=$(cat "$provision/scenario")
home=/usr/local/lib/backstop-vm
mkdir -p /var/lib/backstop-vm
boot=$(( $(cat /var/lib/backstop-vm/boot 2>/dev/null || echo 0) + 1 ))
echo "$boot" > /var/lib/backstop-vm/boot
sync
echo "backstop-vm: boot $boot of scenario $scenario"

report() {
    {
        echo "vm-result boot $boot"
        echo "vm-result status"
        backstopctl status --json
        echo "vm-result boots"
        backstopctl boots --json
        echo "vm-result history"
        backstopctl history --json
        echo "vm-result journal"
        journalctl --list-boots --no-pager
        journalctl -b --no-pager -o short-monotonic | tail -n 300
        echo "vm-result end"
    } > /dev/ttyS1 2>&1
    systemctl poweroff
    exit 0
}

# The status JSON of the agent on one line, without blanks.
status() { backstopctl status sensor --json 2>/dev/null | tr -d ' \n'; }

if [ "$boot" = 1 ]; then
    cp -a "$provision/install/." /
    mkdir -p "$home"
    cp -a "$provision/agent.sh" "$provision/content" "$home/"
    preflight_sec=0
    [ "$scenario" = preflight-panic ] && preflight_sec=10
    sed "s/@PREFLIGHT_SEC@/$preflight_sec/" "$provision/backstop.toml" > /etc/backstop/backstop.toml
    systemd-sysusers
    systemd-tmpfiles --create
    journalctl --update-catalog
    # On disk before anything can crash the kernel: ext4 would leave the files just written
    # empty after a panic (their data is written back only within 30 s).
    sync
    systemctl daemon-reload
    systemctl enable backstopd.service
    systemctl start backstopd.service
    backstopctl stage sensor "$home/content/good" --version good --activate
    backstopctl promote sensor good
    case $scenario in
    content-panic) backstopctl stage sensor "$home/content/bad" --version bad --activate ;;
    preflight-panic) backstopctl stage sensor "$home/content/bad" --version bad --activate ;;
    after-promotion)
        backstopctl stage sensor "$home/content/bad-late" --version bad --activate
        backstopctl promote sensor bad
        ;;
    *) echo "backstop-vm: no scenario $scenario"; report ;;
    esac
    # The kernel panics within seconds; if it does not, say what Backstop did.
    sleep 120
    report
fi

# Wait for the daemon (exit status 3: not running), then for the loop to be broken.
waited=0
while [ "$waited" -lt 60 ]; do
    backstopctl status >/dev/null 2>&1
    [ $? -ne 3 ] && break
    sleep 1; waited=$((waited + 1))
done
# An updater that tries again at every boot: refused once the version is quarantined.
[ "$scenario" = preflight-panic ] && backstopctl activate sensor bad
waited=0
while [ "$waited" -lt 90 ]; do
    current=$(status)
    case $current in *'"state":"running"'*) ;; *) current="" ;; esac
    case $current in *'"active":"good"'*) ;; *) current="" ;; esac
    case $current in *'"quarantined":["bad"]'*) report ;; esac
    sleep 1; waited=$((waited + 1))
done
report
