#!/usr/bin/env python3
"""Backstop's benchmarks, side by side with a minimal C supervisor, systemd and supervisord (`make bench`).

Every figure comes from timestamps that the parties write themselves on one clock,
CLOCK_MONOTONIC (shared by the host and its containers):

- the demo agent appends `start PID NS` as it starts and `crash PID NS` just before
  it reads past its input array (`--timestamp-file`);
- journald stamps each of backstopd's decisions on receipt (`__MONOTONIC_TIMESTAMP`),
  so "recorded" means in the journal, where an operator finds it.

Backstop runs in a private mount namespace with a journald of its own
(scripts/with-private-journald.sh), its agents in its default sandbox; the C floor
(bench/floor.c, compiled here) is pidfd + epoll and nothing else; systemd runs as PID 1
of a container that boots this machine's tree with the release build laid over /usr;
supervisord comes from PyPI. All supervise the same agent binary with the same content.

    bench/bench.py --bin RELEASE_BIN_DIR --install-tree DESTDIR --supervisord PATH --markdown docs/benchmarks.md
    bench/bench.py --smoke --bin BIN_DIR    # a few crashes and a small staging, JSON on stdout
"""

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENT = os.path.join(ROOT, "examples", "content")
# Units of this tree that wait for a network, which a container without one never finishes,
# and the agents of the test packages, which the first boot's presets would enable (as in
# the container tests' harness).
MASKED = [
    "systemd-networkd-wait-online.service", "clamav-daemon.service", "clamav-freshclam.service",
    "clamav-clamonacc.service", "clamav-freshclam-once.timer", "systemd-resolved.service", "systemd-timesyncd.service",
    "crowdsec.service", "fail2ban.service", "usbguard.service", "usbguard-dbus.service",
]


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def nearest_rank(values, percent):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def summary(values, scale=1e-6):
    """min / median / p99 / max of `values` (nanoseconds by default) in milliseconds."""
    if not values:
        return {"n": 0}
    values = [v * scale for v in values]
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "p99": nearest_rank(values, 99), "max": max(values)}


def read_timestamps(path):
    """The agent's `--timestamp-file`: [(event, pid, ns)] in the order written."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as file:
        for line in file:
            parts = line.split()
            if len(parts) == 3:
                rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


def count(path, event):
    """How many times `event` (`start` or `crash`) is in the timestamp file at `path`."""
    return sum(1 for row in read_timestamps(path) if row[0] == event)


def restart_latencies(rows):
    """From each crash to the next start, in ns."""
    latencies = []
    for index, (event, _, ns) in enumerate(rows):
        if event == "crash":
            following = next((r for r in rows[index + 1:] if r[0] == "start"), None)
            if following:
                latencies.append(following[2] - ns)
    return latencies


def process_figures(pid):
    """VmRSS and VmHWM (KiB), CPU time (clock ticks) and context switches by thread ID."""
    figures = {"rss_kib": 0, "hwm_kib": 0, "cpu_ticks": 0, "switches": {}}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                figures["rss_kib"] = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                figures["hwm_kib"] = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
        figures["cpu_ticks"] = int(fields[11]) + int(fields[12])  # utime + stime
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{task}/status") as file:
            for line in file:
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    figures["switches"][task] = figures["switches"].get(task, 0) + int(line.split()[1])
    return figures


def switches_between(before, after):
    """Context switches from the figures `before` to `after`: each thread's own, a thread
    that started in between with all of its own, one that ended with one (its last)."""
    ended = sum(1 for task in before["switches"] if task not in after["switches"])
    return ended + sum(count - before["switches"].get(task, 0) for task, count in after["switches"].items())


# --- Backstop (inside the private journald) -------------------------------------------

class Backstop:
    """One backstopd with its own state and runtime directories and the agents given."""

    def __init__(self, bin_dir, agents, directory=None):
        self.bin_dir = bin_dir
        self.directory = directory or tempfile.mkdtemp(prefix="backstop-bench-")
        self.config = os.path.join(self.directory, "backstop.toml")
        os.makedirs(os.path.join(self.directory, "state"), exist_ok=True)
        with open(self.config, "w") as file:
            file.write(f'[daemon]\nstate_directory = "{self.directory}/state"\n'
                       f'runtime_directory = "{self.directory}/run"\n')
            for body in agents:
                file.write("\n[[agent]]\n" + body + "\n")
        self.process = None

    def start(self):
        """Starts backstopd as systemd would (Type=notify) and returns once it says READY=1:
        its control socket listens earlier, before the agents are set up."""
        path = os.path.join(self.directory, "notify")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(path)
            notify.settimeout(1)
            self.started_ns = now_ns()
            # STATE_DIRECTORY, as systemd sets it: backstopd keeps its last good configuration there.
            self.process = subprocess.Popen([os.path.join(self.bin_dir, "backstopd"), "--config", self.config],
                                            env=dict(os.environ, STATE_DIRECTORY=os.path.join(self.directory, "state"),
                                                     NOTIFY_SOCKET=path),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(TimeoutError):
                    if "READY=1" in notify.recv(4096).decode(errors="replace").splitlines():
                        return
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("backstopd did not come up")

    def ctl(self, *arguments, check=True):
        result = subprocess.run([os.path.join(self.bin_dir, "backstopctl"), *arguments, "--config", self.config],
                                capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"backstopctl {' '.join(arguments)}: {result.stderr.strip()}")
        return result

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def agent_directory(prefix):
    """A directory for the agent's `--timestamp-file`, writable by the sandbox's user
    (`nobody` by default): an agent reaches it only as one of its `read_write_paths`."""
    directory = tempfile.mkdtemp(prefix=prefix)
    os.chmod(directory, 0o777)
    return directory


def demo_agent(bin_dir, name, timestamps=None, extra=""):
    """An `[[agent]]` body for the demo agent in Backstop's default sandbox; with
    `timestamps`, the directory of that file (from ``agent_directory``) is its one
    writable path, since the private /tmp would hide it."""
    arguments = ["--content", "{content}"] + (["--timestamp-file", timestamps] if timestamps else [])
    body = (f'name = "{name}"\nexec = {json.dumps([os.path.join(bin_dir, "backstop-demo-agent"), *arguments])}\n' + extra)
    if timestamps:
        body += f'\n[agent.sandbox]\nread_write_paths = ["{os.path.dirname(timestamps)}"]\n'
    return body


def journal(agent, event=None):
    """backstopd's decisions about `agent` in the private journal, in order."""
    arguments = ["journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager", f"BACKSTOP_AGENT={agent}"]
    if event:
        arguments.append(f"BACKSTOP_EVENT={event}")
    output = subprocess.run(arguments, capture_output=True, text=True).stdout
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def wait_for(what, predicate, seconds):
    """Waits for a condition that the benchmark itself cannot be told about (files other
    processes write); the figures come from their timestamps, not from this loop."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def storm(bin_dir, name):
    """A backstopd whose agent `name` crash-loops on the bad content with no backoff and no
    rollback: every crash is one more detection and one more restart. Yields the daemon and
    the agent's timestamp file; removes both afterwards."""
    work = agent_directory(f"backstop-bench-{name}-")
    timestamps = os.path.join(work, "timestamps")
    daemon = Backstop(bin_dir, [demo_agent(bin_dir, name, timestamps, "failure_threshold = 1000000\nfailure_window_sec = 1\n"
                                           "restart_delay_ms = 0\nrestart_delay_max_sec = 0\n")])
    try:
        daemon.start()
        daemon.ctl("stage", name, os.path.join(CONTENT, "v2-channel-291"), "--version", "bad", "--activate")
        yield daemon, timestamps
    finally:
        daemon.remove()
        shutil.rmtree(work, ignore_errors=True)


def bench_crashes(bin_dir, crashes):
    """Detection and restart latency over `crashes` crashes of a crash-looping agent."""
    with storm(bin_dir, "storm") as (daemon, timestamps):
        wait_for(f"{crashes} crashes", lambda: count(timestamps, "crash") >= crashes + 1, 30 + crashes * 0.3)
        daemon.stop()
        rows = read_timestamps(timestamps)
        exits = [e for e in journal("storm", "agent-exited") if e.get("BACKSTOP_REASON") == "crashed"]
        return {"detection": summary(detection_latencies(rows, exits)[:crashes]),
                "restart": summary(restart_latencies(rows)[:crashes])}


def detection_latencies(rows, exits):
    """From each crash to its `agent-exited` decision, in ns. One agent's runs follow one
    another, so the n-th crash is the n-th exit (a run the daemon stopped as it ended is
    left out of both by stopping the daemon only after the crashes counted)."""
    crashes = [ns for event, _, ns in rows if event == "crash"]
    latencies = [int(entry["__MONOTONIC_TIMESTAMP"]) * 1000 - ns for ns, entry in zip(crashes, exits)]
    if any(latency <= 0 for latency in latencies):
        raise RuntimeError("a decision came before its crash: crashes and decisions do not pair up")
    return latencies


def bench_floor(bin_dir, crashes):
    """The physical floor: bench/floor.c (pidfd + epoll, restart at once, compiled here with
    cc) supervising the same agent on the same content, unsandboxed. Detection ends when
    epoll reports the agent's pidfd readable; restart, as for the others, at the next start."""
    work = tempfile.mkdtemp(prefix="backstop-bench-floor-")
    try:
        floor = os.path.join(work, "floor")
        subprocess.run(["cc", "-O2", "-o", floor, os.path.join(ROOT, "bench", "floor.c")], check=True)
        timestamps = os.path.join(work, "timestamps")
        subprocess.run([floor, str(crashes + 1), os.path.join(work, "exits"), os.path.join(bin_dir, "backstop-demo-agent"),
                        "--content", os.path.join(CONTENT, "v2-channel-291"), "--timestamp-file", timestamps],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=300)
        rows = read_timestamps(timestamps)
        exits = [ns for _, _, ns in read_timestamps(os.path.join(work, "exits"))]
        crashed = [ns for event, _, ns in rows if event == "crash"]
        if len(crashed) != len(exits):
            raise RuntimeError(f"the floor saw {len(exits)} exits of {len(crashed)} crashes")
        detection = [exit_ns - crash_ns for crash_ns, exit_ns in zip(crashed, exits)]
        return {"detection": summary(detection[:crashes]), "restart": summary(restart_latencies(rows)[:crashes])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def small_files(path, files):
    """A content tree of `files` small files (a line each), 100 to a directory."""
    for index in range(files):
        directory = os.path.join(path, f"d{index // 100:04d}")
        if index % 100 == 0:
            os.makedirs(directory)
        with open(os.path.join(directory, f"rule-{index:06d}.conf"), "w") as file:
            file.write(f"channel {index} allow\n")


def bench_staging(bin_dir, files):
    """`backstopctl stage` of a tree of `files` small files against `tar -x` of the same
    tree followed by `sync`, on the same file system; seconds on the benchmark's clock."""
    work = tempfile.mkdtemp(prefix="backstop-bench-staging-")
    daemon = Backstop(bin_dir, [demo_agent(bin_dir, "staging")])
    try:
        tree = os.path.join(work, "tree")
        small_files(tree, files)
        archive = os.path.join(work, "tree.tar")
        subprocess.run(["tar", "-cf", archive, "-C", tree, "."], check=True)
        os.makedirs(os.path.join(work, "extracted"))
        daemon.start()
        subprocess.run(["sync"], check=True)
        started = now_ns()
        subprocess.run(["tar", "-xf", archive, "-C", os.path.join(work, "extracted")], check=True)
        subprocess.run(["sync"], check=True)
        tar_ns = now_ns() - started
        started = now_ns()
        daemon.ctl("stage", "staging", tree, "--version", "many")
        stage_ns = now_ns() - started
        return {"files": files, "tar_s": tar_ns / 1e9, "stage_s": stage_ns / 1e9}
    finally:
        daemon.remove()
        shutil.rmtree(work, ignore_errors=True)


def bench_hangs(bin_dir, samples):
    """Hang detection: from the heartbeat deadline (READY + watchdog_sec) to the agent-hung decision."""
    work = agent_directory("backstop-bench-hang-")
    body = demo_agent(bin_dir, "hang", os.path.join(work, "timestamps"),
                      "notify = true\nwatchdog_sec = 1\nfailure_threshold = 1000000\nfailure_window_sec = 1\n"
                      "restart_delay_ms = 0\nrestart_delay_max_sec = 0\n")
    daemon = Backstop(bin_dir, [body])
    try:
        daemon.start()
        daemon.ctl("stage", "hang", os.path.join(CONTENT, "hang"), "--version", "hang", "--activate")
        wait_for(f"{samples} hangs", lambda: len(journal("hang", "agent-hung")) >= samples, 60 + samples * 3)
        daemon.stop()
        entries = journal("hang")
        latencies = []
        ready = None
        for entry in entries:
            if entry.get("BACKSTOP_EVENT") == "agent-ready":
                ready = int(entry["__MONOTONIC_TIMESTAMP"]) * 1000
            elif entry.get("BACKSTOP_EVENT") == "agent-hung" and ready is not None:
                latencies.append(int(entry["__MONOTONIC_TIMESTAMP"]) * 1000 - (ready + 1_000_000_000))
                ready = None
        return {"hang": summary(latencies[:samples])}
    finally:
        daemon.remove()
        shutil.rmtree(work, ignore_errors=True)


def bench_recovery(bin_dir, runs, policy, prefix):
    """Time to recovery: first crash on a bad candidate → READY on the known-good version."""
    times = []
    for run in range(runs):
        name = f"{prefix}{run}"  # the journal is shared: one agent name per run
        work = agent_directory("backstop-bench-ttr-")
        timestamps = os.path.join(work, "timestamps")
        daemon = Backstop(bin_dir, [demo_agent(bin_dir, name, timestamps, "notify = true\n" + policy)])
        try:
            daemon.start()
            daemon.ctl("stage", name, os.path.join(CONTENT, "v1-good"), "--version", "v1", "--activate")
            wait_for("v1 ready", lambda: len(journal(name, "agent-ready")) >= 1, 30)
            daemon.ctl("promote", name, "v1")
            daemon.ctl("stage", name, os.path.join(CONTENT, "v2-channel-291"), "--version", "v2", "--activate")
            wait_for("the rollback to v1", lambda: len(journal(name, "agent-ready")) >= 2, 60)
            first_crash = next(ns for event, _, ns in read_timestamps(timestamps) if event == "crash")
            ready = int(journal(name, "agent-ready")[1]["__MONOTONIC_TIMESTAMP"]) * 1000
            times.append(ready - first_crash)
        finally:
            daemon.remove()
            shutil.rmtree(work, ignore_errors=True)
    return summary(times)


def bench_footprint(bin_dir, agents, seconds):
    """backstopd idle with `agents` healthy agents: memory, CPU time and wakeups per minute."""
    names = [f"idle{agents}x{index}" for index in range(agents)]  # the journal is shared: names of their own
    bodies = [demo_agent(bin_dir, name, extra="notify = true\n") for name in names]
    daemon = Backstop(bin_dir, bodies)
    try:
        daemon.start()
        for name in names:
            daemon.ctl("stage", name, os.path.join(CONTENT, "v1-good"), "--version", "v1", "--activate")
        wait_for("every agent ready", lambda: all(journal(name, "agent-ready") for name in names), 60)
        time.sleep(2)  # let the last start's work settle before the idle window
        before = process_figures(daemon.process.pid)
        time.sleep(seconds)
        after = process_figures(daemon.process.pid)
        per_minute = 60 / seconds
        return {"agents": agents, "rss_kib": after["rss_kib"], "hwm_kib": after["hwm_kib"],
                "cpu_ms_per_min": (after["cpu_ticks"] - before["cpu_ticks"]) * 1000 / os.sysconf("SC_CLK_TCK") * per_minute,
                "wakeups_per_min": switches_between(before, after) * per_minute}
    finally:
        daemon.remove()


def boot_history(state, boots, versions, name):
    """Grows a real state directory to `boots` boot records and `versions` content versions,
    by copying the records and the version that backstopd itself wrote."""
    with open(os.path.join(state, "boots.json")) as file:
        log_file = json.load(file)
    template = log_file["boots"][-1]
    log_file["boots"] = [dict(template, id=uuid.uuid4().hex, state="good") for _ in range(boots)]
    with open(os.path.join(state, "boots.json"), "w") as file:
        json.dump(log_file, file)
    agent = os.path.join(state, name)
    with open(os.path.join(agent, "state.json")) as file:
        agent_state = json.load(file)
    record = agent_state["ledger"]["versions"][0]
    source = os.path.join(agent, "versions", record["id"])
    for index in range(1, versions):
        copy = dict(record, id=f"old{index:05d}", standing="quarantined" if index % 2 else "known-good")
        agent_state["ledger"]["versions"].insert(0, copy)
        subprocess.run(["cp", "-a", source, os.path.join(agent, "versions", copy["id"])], check=True)
    with open(os.path.join(agent, "state.json"), "w") as file:
        json.dump(agent_state, file)


def new_boot(state):
    """Makes the current boot a past one, as the kernel's new boot ID would."""
    path = os.path.join(state, "boots.json")
    with open(path) as file:
        log_file = json.load(file)
    current = open("/proc/sys/kernel/random/boot_id").read().strip().replace("-", "")
    for boot in log_file["boots"]:
        if boot["id"] == current:
            boot["id"] = uuid.uuid4().hex
    with open(path, "w") as file:
        json.dump(log_file, file)


def bench_boot(bin_dir, runs, boots, versions):
    """From backstopd's exec to the agent's start at boot, with a small and a large history."""
    results = {}
    for label, history in (("empty", None), ("large", (boots, versions))):
        work = agent_directory("backstop-bench-boot-")
        timestamps = os.path.join(work, "timestamps")
        name = f"boot{label}"  # the journal is shared: a name of its own
        daemon = Backstop(bin_dir, [demo_agent(bin_dir, name, timestamps, "notify = true\n")])
        try:
            daemon.start()
            daemon.ctl("stage", name, os.path.join(CONTENT, "v1-good"), "--version", "v1", "--activate")
            wait_for("the agent ready", lambda: journal(name, "agent-ready"), 30)
            daemon.ctl("promote", name, "v1")
            daemon.stop()
            state = os.path.join(daemon.directory, "state")
            if history:
                boot_history(state, *history, name)
            times = []
            for _ in range(runs):
                new_boot(state)
                starts = count(timestamps, "start")
                daemon.start()
                wait_for("the agent's start", lambda: count(timestamps, "start") > starts, 60)
                start_ns = [ns for event, _, ns in read_timestamps(timestamps) if event == "start"][-1]
                times.append(start_ns - daemon.started_ns)
                daemon.stop()
            results[label] = summary(times)
        finally:
            daemon.remove()
            shutil.rmtree(work, ignore_errors=True)
    return results


def bench_stress(bin_dir, seconds):
    """A crash storm with no backoff: status latency, memory, and whether every decision reached the journal."""
    with storm(bin_dir, "stress") as (daemon, timestamps):
        time.sleep(1)
        rss_start = process_figures(daemon.process.pid)["rss_kib"]
        latencies = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = now_ns()
            daemon.ctl("status", "--json", check=False)
            latencies.append(now_ns() - started)
            time.sleep(0.05)
        figures = process_figures(daemon.process.pid)
        daemon.stop()
        crashes = count(timestamps, "crash")
        # The run that the daemon's stop ends is an exit but no crash: count the crashes only.
        exits = [e for e in journal("stress", "agent-exited") if e.get("BACKSTOP_REASON") == "crashed"]
        return {"status": summary(latencies), "crashes": crashes, "lost": crashes - len(exits),
                "rss_start_kib": rss_start, "rss_end_kib": figures["rss_kib"], "hwm_kib": figures["hwm_kib"]}


def backstop_phase(arguments):
    """Everything measured of Backstop; runs next to its own journald."""
    bin_dir = arguments.bin
    results = {}
    log(f"Backstop: {arguments.crashes} crashes (detection, restart)")
    results.update(bench_crashes(bin_dir, arguments.crashes))
    log(f"Backstop: staging {arguments.staging_files} small files, and tar -x + sync of them")
    results["staging"] = bench_staging(bin_dir, arguments.staging_files)
    if arguments.smoke:
        return results
    log(f"Backstop: {arguments.hangs} hangs")
    results.update(bench_hangs(bin_dir, arguments.hangs))
    log("Backstop: time to recovery, default and fast policy")
    results["recovery_default"] = bench_recovery(bin_dir, arguments.runs, "", "ttrdefault")
    results["recovery_fast"] = bench_recovery(
        bin_dir, arguments.runs, "failure_threshold = 2\nrestart_delay_ms = 0\n", "ttrfast")
    log(f"Backstop: idle footprint, {arguments.idle_seconds} s each with 1 and 10 agents")
    results["footprint"] = [bench_footprint(bin_dir, count, arguments.idle_seconds) for count in (1, 10)]
    log("Backstop: boot assessment with a large history")
    results["boot"] = bench_boot(bin_dir, arguments.runs, arguments.boots, arguments.versions)
    log(f"Backstop: {arguments.stress_seconds} s crash storm")
    results["stress"] = bench_stress(bin_dir, arguments.stress_seconds)
    return results


# --- systemd in a container -------------------------------------------------------------

class Container:
    """This machine's tree booted with systemd as PID 1 (systemd-nspawn), the release
    build laid over /usr, and `bench` (a host directory) at /var/lib/bench."""

    def __init__(self, install_tree, units):
        self.directory = tempfile.mkdtemp(prefix="backstop-bench-container-")
        self.bench = os.path.join(self.directory, "bench")
        os.makedirs(self.bench)
        shutil.copytree(os.path.join(CONTENT, "v2-channel-291"), os.path.join(self.bench, "bad"))
        binds = []
        os.chmod(self.bench, 0o777)  # the sandboxed unit's agent runs as nobody
        for name, text in units.items():
            path = os.path.join(self.directory, "units", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as file:
                file.write(text)
            binds.append(f"--bind-ro={path}:/etc/systemd/system/{name}")
        self.process = subprocess.Popen(
            ["systemd-nspawn", "-D", "/", "--volatile=yes", "--private-network", "--register=no", "--keep-unit",
             f"--overlay-ro=/usr:{install_tree}/usr:/usr", f"--bind={self.bench}:/var/lib/bench", *binds,
             "-b", "--", "systemd.firstboot=off", *[f"systemd.mask={unit}" for unit in MASKED]],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.leader = None
        try:
            wait_for("the container's PID 1", self._find_leader, 30)
            wait_for("the container to boot", lambda: self.run("systemctl", "is-system-running").stdout.strip()
                     in ("running", "degraded"), 90)
        except BaseException:
            self.remove()
            raise

    def _find_leader(self):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as file:
                        if int(file.read().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                            self.leader = int(entry)
                            return True
                except (FileNotFoundError, ProcessLookupError):
                    continue
        return False

    def run(self, *arguments):
        return subprocess.run(["nsenter", "-t", str(self.leader), "-a", *arguments], capture_output=True, text=True)

    def remove(self):
        if self.leader:
            try:
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


AGENT = "/usr/libexec/backstop/backstop-demo-agent --content /var/lib/bench/bad --timestamp-file /var/lib/bench/{name}"


def sandbox_drop_in(bin_dir, unit):
    """The drop-in `backstopctl sandbox --drop-in` writes for `unit` with Backstop's default
    sandbox and /var/lib/bench writable (where the agent writes its timestamps): the sandbox
    that Backstop's own agents get, as unit settings."""
    directory = tempfile.mkdtemp(prefix="backstop-bench-drop-in-")
    try:
        config = os.path.join(directory, "backstop.toml")
        with open(config, "w") as file:
            file.write(f'[[agent]]\nname = "bench"\nrunner = "systemd"\nunit = "{unit}"\n'
                       'content_link = "/var/lib/bench/bad"\n\n[agent.sandbox]\nread_write_paths = ["/var/lib/bench"]\n')
        return subprocess.run([os.path.join(bin_dir, "backstopctl"), "sandbox", "bench", "--drop-in", "--config", config],
                              capture_output=True, text=True, check=True).stdout
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def systemd_units(bin_dir):
    # Restart latency: restart at once, never give up; without a sandbox, and in the one
    # Backstop's agents get by default.
    restart = "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart={agent}\nRestart=on-failure\nRestartSec=0\n"
    return {
        "bench-restart.service": restart.format(agent=AGENT.format(name="restart")),
        "bench-sandboxed.service": restart.format(agent=AGENT.format(name="sandboxed")),
        "bench-sandboxed.service.d/sandbox.conf": sandbox_drop_in(bin_dir, "bench-sandboxed.service"),
        # What an operator would write: Restart=on-failure with systemd's defaults otherwise.
        "bench-alone.service": "[Service]\nExecStart=" + AGENT.format(name="alone") + "\nRestart=on-failure\n",
    }


def bench_supervisord(supervisord, bin_dir, restarts, alone_seconds):
    """supervisord on the same agent: restart latency, and what it does alone with bad content."""
    directory = tempfile.mkdtemp(prefix="backstop-bench-supervisord-")
    bad = os.path.join(directory, "bad")
    shutil.copytree(os.path.join(CONTENT, "v2-channel-291"), bad)
    agent = os.path.join(bin_dir, "backstop-demo-agent")
    config = os.path.join(directory, "supervisord.conf")
    with open(config, "w") as file:
        file.write(f"[supervisord]\nnodaemon=true\nlogfile={directory}/supervisord.log\npidfile={directory}/supervisord.pid\n"
                   f"[unix_http_server]\nfile={directory}/supervisor.sock\n"
                   f"[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
                   f"[supervisorctl]\nserverurl=unix://{directory}/supervisor.sock\n")
        # Restart latency: restart at once, never give up (startsecs=0: a start counts as successful).
        file.write(f"[program:restart]\ncommand={agent} --content {bad} --timestamp-file {directory}/restart\n"
                   "autorestart=true\nstartsecs=0\nstartretries=1000000\n")
        # What an operator would write: autorestart with supervisord's defaults otherwise.
        file.write(f"[program:alone]\ncommand={agent} --content {bad} --timestamp-file {directory}/alone\nautorestart=true\n")
    supervisorctl = os.path.join(os.path.dirname(supervisord), "supervisorctl")
    process = subprocess.Popen([supervisord, "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        restart_file = os.path.join(directory, "restart")
        wait_for(f"{restarts} supervisord restarts",
                 lambda: count(restart_file, "start") > restarts, 300)
        latencies = restart_latencies(read_timestamps(restart_file))[:restarts]
        subprocess.run([supervisorctl, "-c", config, "stop", "restart"],
                       capture_output=True)
        time.sleep(max(0, alone_seconds - (time.monotonic() - started)))
        state = subprocess.run([supervisorctl, "-c", config, "status", "alone"],
                               capture_output=True, text=True).stdout.split()
        crashes = count(os.path.join(directory, "alone"), "crash")
        return {"restart": summary(latencies), "alone": {"state": state[1] if len(state) > 1 else "unknown", "crashes": crashes}}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)


def bench_systemd(install_tree, bin_dir, restarts, alone_seconds):
    """systemd (Restart=on-failure) on the same agent: restart latency without a sandbox and
    with Backstop's, and what it does alone with bad content."""
    container = Container(install_tree, systemd_units(bin_dir))
    try:
        started = time.monotonic()
        container.run("systemctl", "start", "--no-block", "bench-alone.service")
        results = {}
        for key, unit, name in (("restart", "bench-restart.service", "restart"),
                                ("restart_sandboxed", "bench-sandboxed.service", "sandboxed")):
            container.run("systemctl", "start", "--no-block", unit)
            timestamps = os.path.join(container.bench, name)
            wait_for(f"{restarts} systemd restarts of {unit}", lambda: count(timestamps, "start") > restarts, 300)
            container.run("systemctl", "stop", unit)
            results[key] = summary(restart_latencies(read_timestamps(timestamps))[:restarts])
        time.sleep(max(0, alone_seconds - (time.monotonic() - started)))
        shown = container.run("systemctl", "show", "bench-alone.service", "-p", "ActiveState", "-p", "Result").stdout
        state = dict(line.split("=", 1) for line in shown.split())
        crashes = count(os.path.join(container.bench, "alone"), "crash")
        return dict(results, alone={"state": f"{state.get('ActiveState')} ({state.get('Result')})", "crashes": crashes})
    finally:
        container.remove()


# --- Report -------------------------------------------------------------------------------

def ms(figures, keys=("median", "p99")):
    if not figures or figures.get("n", 0) == 0:
        return "n/a"
    return " / ".join(f"{figures[key]:.3f}" for key in keys) + f" (n={figures['n']})"


def report(backstop, floor, systemd, supervisord, sizes, settings, load_at_start):
    lines = []
    add = lines.append
    footprint = {f["agents"]: f for f in backstop["footprint"]}
    staging = backstop["staging"]
    add("| Figure | Backstop | C floor (pidfd + epoll) | systemd, Backstop's sandbox | systemd, no sandbox | supervisord |")
    add("|---|---|---|---|---|---|")
    add(f"| Crash detection, death → decision (Backstop: in the journal; floor: pidfd readable), ms median / p99 | {ms(backstop['detection'])} | {ms(floor['detection'])} | n/a | n/a | n/a |")
    add(f"| Hang detection, heartbeat deadline → decision, ms min / median / max | {ms(backstop['hang'], ('min', 'median', 'max'))} | n/a | n/a | n/a | n/a |")
    add(f"| Restart latency, death → new agent process running, ms median / p99 | {ms(backstop['restart'])} | {ms(floor['restart'])} | {ms(systemd['restart_sandboxed'])} | {ms(systemd['restart'])} | {ms(supervisord['restart'])} |")
    add(f"| Time to recovery, first crash on bad content → READY on known-good, ms min / median / max, default policy | {ms(backstop['recovery_default'], ('min', 'median', 'max'))} | | | never: {systemd['alone']['state']} after {systemd['alone']['crashes']} crashes in {settings.alone_seconds} s | never: {supervisord['alone']['state']} after {supervisord['alone']['crashes']} crashes in {settings.alone_seconds} s |")
    add(f"| Time to recovery, fast policy (failure_threshold = 2, restart_delay_ms = 0), ms min / median / max | {ms(backstop['recovery_fast'], ('min', 'median', 'max'))} | | | | |")
    for count in (1, 10):
        f = footprint[count]
        add(f"| Idle with {count} agent(s): VmRSS / VmHWM MiB | {f['rss_kib'] / 1024:.1f} / {f['hwm_kib'] / 1024:.1f} | | | | |")
        add(f"| Idle with {count} agent(s): CPU ms per minute (in steps of {2 * 1000 / os.sysconf('SC_CLK_TCK') * 60 / settings.idle_seconds:.0f}: clock ticks), "
            f"wakeups (context switches) per minute | {f['cpu_ms_per_min']:.0f}, {f['wakeups_per_min']:.0f} | | | | |")
    boot = backstop["boot"]
    add(f"| Boot assessment, exec → agent started, ms min / median / max: empty history | {ms(boot['empty'], ('min', 'median', 'max'))} | | | | |")
    add(f"| … with {settings.boots} boot records and {settings.versions} versions | {ms(boot['large'], ('min', 'median', 'max'))} | | | | |")
    add(f"| Staging {staging['files']} small files, s: `backstopctl stage` (Backstop) against `tar -x` + `sync` (floor column) | {staging['stage_s']:.2f} | {staging['tar_s']:.2f} | | | |")
    stress = backstop["stress"]
    add(f"| Crash storm ({settings.stress_seconds} s, no backoff): `status --json` latency ms median / p99 / max | {ms(stress['status'], ('median', 'p99', 'max'))} | | | | |")
    add(f"| … VmRSS at start → end MiB; decisions lost | {stress['rss_start_kib'] / 1024:.1f} → {stress['rss_end_kib'] / 1024:.1f}; {stress['lost']} of {stress['crashes']} | | | | |")
    add("| Binary sizes as installed, MiB (static Swift runtime, stripped) | " + ", ".join(f"{name} {size / 1048576:.1f}" for name, size in sizes.items()) + " | | | | |")
    table = "\n".join(lines) + "\n\n" + targets(backstop, floor, systemd, sizes, settings)
    machine = (f"{platform.node()}: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs, "
               f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
               f"{subprocess.run(['systemctl', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}, "
               f"load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end and "
               f"{os.getloadavg()[1]:.1f} over its last five minutes (figures from a busy machine are inflated)")
    return table, machine


# Why a target is not met, as far as it has been measured (docs/benchmarks.md tells how).
CAUSES = {
    "rss": "Foundation and its ICU data (about 9.6 MiB), crypto (3.5 MiB) and the relocations of a static runtime (about 3 MiB)",
    "size": "Foundation's ICU data (32 MiB) and the static Swift runtime (symbols and debug information are stripped)",
    "wakeups": "libdispatch's 1 Hz pool monitor, and timers and relays that are still tasks and threads of their own",
    "detection": "a /proc scan for what the run left behind (about 3.4 ms) comes before the decision",
    "restart": "bwrap → setpriv → bash → agent: two wrapper execs inside the sandbox; the durable write of the failure",
    "boot": "`ldd` twice at the first spawn, a configuration-check child, an environ scan of every process",
    "staging": "an fsync per file",
}


def targets(backstop, floor, systemd, sizes, settings):
    """The targets for Backstop's footprint and latency, each as a ratio of measured to
    target with its verdict, and the measured cause of a miss."""
    rows = []

    def target(what, measured, value, limit, cause, unit=""):
        if limit:
            ratio = f"{value / limit:.2f}"
        else:
            ratio = "n/a (target 0)"
        verdict = "met" if value <= limit else f"not met: {CAUSES[cause]}"
        rows.append(f"| {what} | {measured} | {ratio} | {verdict} |")

    footprint = {f["agents"]: f for f in backstop["footprint"]}
    for agents, limit in ((1, 14), (10, 16)):
        rss = footprint[agents]["rss_kib"] / 1024
        target(f"Idle VmRSS with {agents} agent(s) ≤ {limit} MiB", f"{rss:.1f} MiB", rss, limit, "rss")
    for name, size in sizes.items():
        mib = size / 1048576
        target(f"{name} ≤ 25 MiB", f"{mib:.1f} MiB", mib, 25, "size")
    for agents in (1, 10):
        wakeups = footprint[agents]["wakeups_per_min"]
        target(f"Idle wakeups with {agents} agent(s): 0 context switches a minute", f"{wakeups:.0f} a minute", wakeups, 0, "wakeups")
    detection = backstop["detection"]
    target("Crash detection median ≤ 1 ms", f"{detection['median']:.3f} ms", detection["median"], 1, "detection")
    target("Crash detection p99 ≤ 3 × the C floor's p99", f"{detection['p99']:.3f} ms against 3 × {floor['detection']['p99']:.3f} ms",
           detection["p99"], 3 * floor["detection"]["p99"], "detection")
    restart = backstop["restart"]["median"]
    sandboxed, bare = systemd["restart_sandboxed"]["median"], systemd["restart"]["median"]
    target("Restart latency median ≤ systemd's with Backstop's sandbox", f"{restart:.3f} ms against {sandboxed:.3f} ms",
           restart, sandboxed, "restart")
    target("Restart latency median ≤ 1.5 × systemd's without a sandbox", f"{restart:.3f} ms against 1.5 × {bare:.3f} ms",
           restart, 1.5 * bare, "restart")
    boot = backstop["boot"]["large"]["median"]
    target(f"Boot assessment (exec → agent started, median) ≤ 15 ms with {settings.boots} boot records",
           f"{boot:.1f} ms", boot, 15, "boot")
    staging = backstop["staging"]
    target(f"Staging {staging['files']} small files ≤ 3 × `tar -x` + `sync`",
           f"{staging['stage_s']:.2f} s against 3 × {staging['tar_s']:.2f} s", staging["stage_s"], 3 * staging["tar_s"], "staging")
    return "\n".join(["| Target | Measured | Ratio (measured / target) | Verdict |", "|---|---|---|---|"] + rows)


def smoke(arguments):
    """A few crashes under Backstop and under the C floor, and a small staging: proves
    that the benchmark still runs (`--smoke`, from the tests). Prints the figures as JSON;
    fails when a party produced fewer samples than asked for."""
    floor = bench_floor(arguments.bin, arguments.crashes)
    backstop = run_backstop_phase(arguments)
    print(json.dumps({"backstop": backstop, "floor": floor}, indent=2))
    counts = {"Backstop's detection": backstop["detection"]["n"], "Backstop's restarts": backstop["restart"]["n"],
              "the floor's detection": floor["detection"]["n"], "the floor's restarts": floor["restart"]["n"]}
    short = [f"{name}: {n} of {arguments.crashes}" for name, n in counts.items() if n != arguments.crashes]
    if short:
        raise SystemExit("bench smoke: too few samples: " + "; ".join(short))


def run_backstop_phase(arguments):
    """``backstop_phase`` next to a journald of its own (scripts/with-private-journald.sh)."""
    result = tempfile.NamedTemporaryFile(prefix="backstop-bench-", suffix=".json", delete=False).name
    try:
        subprocess.run([os.path.join(ROOT, "scripts", "with-private-journald.sh"), "--", sys.executable,
                        os.path.abspath(__file__), *sys.argv[1:], "--backstop-only", result], check=True)
        with open(result) as file:
            return json.load(file)
    finally:
        os.unlink(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the release build's bin directory")
    parser.add_argument("--install-tree", help="a `make install` DESTDIR (for the container)")
    parser.add_argument("--supervisord", help="supervisord from PyPI")
    parser.add_argument("--markdown", help="write the report here")
    parser.add_argument("--smoke", action="store_true",
                        help="a few crashes under Backstop and the C floor and a small staging, to prove the benchmark runs")
    parser.add_argument("--crashes", type=int)
    parser.add_argument("--hangs", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=300)
    parser.add_argument("--supervisord-restarts", type=int, default=30,
                        help="supervisord waits about 2 s before each restart: fewer, to stay within minutes")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-seconds", type=int, default=30)
    parser.add_argument("--boots", type=int, default=10000)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--staging-files", type=int,
                        help="files in the staged tree (10,000; 100 with --smoke): at an fsync per file, 100,000 take ten minutes")
    parser.add_argument("--stress-seconds", type=int, default=60)
    parser.add_argument("--alone-seconds", type=int, default=60, help="how long systemd and supervisord get alone")
    parser.add_argument("--backstop-only", metavar="RESULT", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    arguments.bin = os.path.abspath(arguments.bin)  # the agents' exec and the sandbox need absolute paths
    arguments.crashes = arguments.crashes or (5 if arguments.smoke else 1000)
    arguments.staging_files = arguments.staging_files or (100 if arguments.smoke else 10000)
    if arguments.backstop_only:
        with open(arguments.backstop_only, "w") as file:
            json.dump(backstop_phase(arguments), file)
        return
    if arguments.smoke:
        smoke(arguments)
        return
    started, load_at_start = time.monotonic(), os.getloadavg()[0]
    backstop = run_backstop_phase(arguments)
    log(f"C floor: {arguments.crashes} crashes (detection, restart)")
    floor = bench_floor(arguments.bin, arguments.crashes)
    log(f"systemd: {arguments.restarts} restarts without a sandbox and with Backstop's, and alone with bad content for {arguments.alone_seconds} s")
    systemd = bench_systemd(arguments.install_tree, arguments.bin, arguments.restarts, arguments.alone_seconds)
    log(f"supervisord: {arguments.supervisord_restarts} restarts, and alone with bad content for {arguments.alone_seconds} s")
    supervisord = bench_supervisord(arguments.supervisord, arguments.bin, arguments.supervisord_restarts, arguments.alone_seconds)
    # As installed (`make install` strips them), not as built.
    sizes = {name: os.path.getsize(os.path.join(arguments.install_tree, path, name))
             for name, path in (("backstopd", "usr/sbin"), ("backstopctl", "usr/bin"))}
    table, machine = report(backstop, floor, systemd, supervisord, sizes, arguments, load_at_start)
    print(table)
    print(f"\n{machine}; {time.monotonic() - started:.0f} s")
    if arguments.markdown:
        write_figures(arguments.markdown, table, machine, round(time.monotonic() - started))


BEGIN, END = "<!-- figures: begin (written by bench/bench.py) -->", "<!-- figures: end -->"


def write_figures(path, table, machine, seconds):
    """Replaces the figures between the markers of `path`; the prose around them is kept."""
    with open(path) as file:
        text = file.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no figures markers ({BEGIN} ... {END})")
    figures = (f"{BEGIN}\n{table}\n\nMeasured {time.strftime('%Y-%m-%d')} on {machine}, "
               f"in {seconds} s, by `make bench`.\n{END}")
    head, rest = text.split(BEGIN, 1)
    with open(path, "w") as file:
        file.write(head + figures + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
