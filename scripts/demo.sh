#!/bin/bash
# The main job end to end, with no systemd: the demo agent runs on good content
# (v1), a bad update (v2, the Channel File 291 re-enactment) makes it crash on
# every start, and Backstop rolls back to v1 and quarantines v2.
# Usage: scripts/demo.sh BIN_DIR   (the directory holding the built binaries)
set -euo pipefail

bin=${1:?usage: demo.sh BIN_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/backstop-demo.XXXXXX)
# The agent runs as user nobody in its sandbox: it must reach its content.
chmod 755 "$work"
log=$work/backstopd.log
daemon=""
printer=""
feeds=()

# The timeline's helpers get SIGKILL: a caller may have left SIGTERM blocked in the
# signal mask they inherit.
cleanup() {
    [ -n "$printer" ] && kill -KILL "$printer" 2>/dev/null || true
    [ ${#feeds[@]} -gt 0 ] && kill -KILL "${feeds[@]}" 2>/dev/null || true
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon"
        wait "$daemon" 2>/dev/null || true
    fi
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/backstop.toml" <<TOML
[daemon]
state_directory = "$work/state"
runtime_directory = "$work/run"

[[agent]]
name = "demo"
exec = ["$bin/backstop-demo-agent", "--content", "{content}"]
notify = true
# Ready once READY=1 came and this check passes; what it says goes under demo-ready-check.
ready_check_exec = ["/bin/sh", "-c", "test -r \$BACKSTOP_CONTENT && echo ready check: content \$BACKSTOP_CONTENT_VERSION is readable >&2"]
watchdog_sec = 5
failure_threshold = 3
failure_window_sec = 60
probation_sec = 3
TOML

ctl() { "$bin/backstopctl" --config "$work/backstop.toml" "$@"; }

# Opens a follower of the log on file descriptor $feed; its pid goes to feeds.
follow_log() {
    exec {feed}< <(exec tail -n +1 -F "$log" 2>/dev/null)
    feeds+=($!)
}

# Waits (up to 60 s) until the daemon has logged COUNT decisions of kind EVENT.
wait_for() {
    local event=$1 count=${2:-1} found=0
    follow_log
    # Not >/dev/null: GNU grep then stops at the first match, whatever -m says.
    timeout 60 grep -a -m "$count" -F "event=$event " <&$feed >"$work/wait.out" || found=$?
    kill -KILL "${feeds[-1]}" 2>/dev/null || true
    exec {feed}<&-
    if [ "$found" -ne 0 ]; then
        echo "demo: timed out waiting for $event" >&2
        exit 1
    fi
}

: > "$log"
start=$(date +%s%N)
# The timeline: one line per decision, with the time since the demo started.
follow_log
while IFS= read -r line; do
    case "$line" in
    *"[event="*)
        now=$(date +%s%N)
        event=$(sed -E 's/.*\[event=([^ ]+).*/\1/' <<<"$line")
        elapsed=$(( (now - start) / 1000000 ))
        printf '%3d.%03ds  %-20s %s\n' $(( elapsed / 1000 )) $(( elapsed % 1000 )) "$event" "${line#*] }"
        ;;
    "== "*) echo "$line" ;;
    esac
done <&$feed &
printer=$!
disown "$printer"

echo "== Backstop demo (work directory $work)"
# STATE_DIRECTORY, as systemd sets it: backstopd keeps its last good configuration there.
STATE_DIRECTORY="$work/state" "$bin/backstopd" --config "$work/backstop.toml" >>"$log" 2>&1 &
daemon=$!
timeout 10 bash -c "until [ -S '$work/run/io.backstop.Manager' ]; do sleep 0.1; done"

# Steps go through the log too, so that they print in order with the decisions.
step() { echo "== $*" >>"$log"; }
step "Stage and activate good content v1; it is promoted after its probation"
ctl stage demo "$repo/examples/content/v1-good" --version v1 --activate >/dev/null
wait_for content-promoted

step "Stage and activate v2, whose channel file has 21 fields for a 20-field template"
ctl stage demo "$repo/examples/content/v2-channel-291" --version v2 --activate >/dev/null
wait_for rollback
wait_for agent-ready 2
sleep 0.2
kill -KILL "$printer" 2>/dev/null || true
printer=""

echo
echo "== backstopctl status"
status=0
ctl status || status=$?
json=$(ctl status --json || true)
if [ "$status" -ne 1 ] || ! grep -q '"active":"v1"' <<<"$json" || ! grep -q '"v2"' <<<"$json"; then
    echo "demo: expected v1 active, v2 quarantined and status exit code 1 (rolled back); got $status" >&2
    exit 1
fi
echo
echo "Backstop rolled back to v1 and quarantined v2; status exits 1 (degraded: rolled back) until"
echo "an operator runs 'backstopctl reset-failed demo'."
