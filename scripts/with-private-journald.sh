#!/bin/bash
# Runs a command next to a journald of its own, in a private mount namespace, so that
# tests can prove what reaches the journal without touching the machine's journal.
#
#   scripts/with-private-journald.sh [--catalog FILE] -- COMMAND [ARG...]
#
# Inside: a tmpfs on /run with a fresh systemd-journald (journal files in
# /run/log/journal, read them with `journalctl -D /run/log/journal`), and with
# --catalog, FILE installed next to systemd's own catalogs and the catalog database
# rebuilt, so that `journalctl -x` explains our entries. Needs root. Everything
# mounted here disappears with the namespace; journald is stopped on the way out.
set -euo pipefail

if [ "${BACKSTOP_IN_PRIVATE_NAMESPACE:-}" != 1 ]; then
    export BACKSTOP_IN_PRIVATE_NAMESPACE=1
    exec unshare --mount --propagation private "$0" "$@"
fi

catalog=""
if [ "${1:-}" = "--catalog" ]; then
    catalog=$2
    shift 2
fi
[ "${1:-}" = "--" ] && shift

mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
if [ -n "$catalog" ]; then
    staged=$(mktemp -d)
    cp /usr/lib/systemd/catalog/*.catalog "$staged/" 2>/dev/null || true
    mount -t tmpfs tmpfs /usr/lib/systemd/catalog
    cp "$staged"/*.catalog /usr/lib/systemd/catalog/ 2>/dev/null || true
    cp "$catalog" /usr/lib/systemd/catalog/
    rm -rf "$staged"
    mkdir -p /var/lib/systemd/catalog
    mount -t tmpfs tmpfs /var/lib/systemd/catalog
    journalctl --update-catalog
fi

# journald says READY=1 over sd_notify once it listens: a listener starts it, waits
# for exactly that, and prints its pid. The listener then stays, as a service manager
# would, taking the stream descriptors journald hands over (and closing them), until
# journald is gone.
journald=$(python3 -c '
import os, socket, subprocess
path = "/run/journald-notify"
listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
listener.bind(path)
listener.settimeout(20)
journald = subprocess.Popen(["/lib/systemd/systemd-journald"], env=dict(os.environ, NOTIFY_SOCKET=path),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
while b"READY=1" not in listener.recv(4096).split(b"\n"):
    pass
print(journald.pid, flush=True)
if os.fork() > 0:
    os._exit(0)
os.close(1)
import select
gone = os.pidfd_open(journald.pid)
listener.setblocking(False)
while gone not in select.select([listener, gone], [], [])[0]:
    message, fds, _, _ = socket.recv_fds(listener, 4096, 16)
    for fd in fds:
        os.close(fd)
')
trap 'kill "$journald" 2>/dev/null || true' EXIT

"$@"
