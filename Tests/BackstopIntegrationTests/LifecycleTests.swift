@testable import BackstopCore
import CLinux
import Foundation
import Testing

/// The daemon's own life: restarts, crashes, a stopped daemon, and bad configuration.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct LifecycleTests {
    @Test("backstopctl takes its shared options, --config and --no-pager, before the verb as after it")
    func sharedOptionsBeforeTheVerb() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        try harness.start()
        for arguments in [
            ["--config", harness.configPath, "--no-pager", "status", "--json"],
            ["--no-pager", "--config=\(harness.configPath)", "status", "--json"],
            ["status", "--json", "--no-pager", "--config", harness.configPath],
        ] {
            let result = try Command.run(Paths.binary("backstopctl"), arguments)
            #expect(result.output.contains("\"running\":true"), "\(arguments): \(result.output) \(result.error)")
        }
    }

    @Test("Stopping the daemon stops the agent; a restart resumes probation without counting a failure")
    func restartResumes() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: "notify = true")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1")
        try harness.wait(for: "agent-ready")
        let pid = try #require(try harness.agent().pid)
        harness.stop()
        #expect(!ProcessTable.isAlive(pid), "the agent does not outlive the daemon")

        let (saved, exitCode) = try harness.status()
        #expect(exitCode == 3, "status exits 3 when the daemon is not running")
        #expect(saved.daemon.running == false)
        #expect(saved.agents.first?.content.candidate == "v1")
        let down = try harness.ctl("status")
        #expect(down.error.contains("not running"))
        let listing = try harness.ctl("content", "list", "demo", "--no-legend")
        #expect(listing.status == 0, "reading works without the daemon")
        #expect(listing.output.hasPrefix("* v1 "))
        #expect(listing.error.contains("not running"))
        let refused = try harness.ctl("activate", "demo", "v1")
        #expect(refused.status == 3)
        #expect(refused.error.contains("backstopd is not running"))

        try harness.start()
        try harness.wait(for: "agent-ready")
        let agent = try harness.agent()
        #expect(agent.state == "running")
        #expect(agent.failures.recent == 0, "the daemon's own restart is not an agent failure")
        #expect(agent.content.candidate == "v1", "still in probation after the restart")
        #expect(agent.content.knownGood == nil)
        #expect(agent.pid != pid)
    }

    @Test("An agent dies with a killed daemon (its sandbox is bwrap --die-with-parent); what it started outside its session is stopped when the daemon comes back")
    func orphanIsReaped() throws {
        let marker = NSTemporaryDirectory() + "backstop-orphan-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: marker) }
        // The agent starts a process in a session of its own, which no death signal reaches.
        let script = "setsid sleep 600 & echo $! > \(marker); exec \(Paths.binary("backstop-demo-agent")) --content \"$BACKSTOP_CONTENT\""
        let harness = try DaemonHarness(agents: ["name = \"demo\"\nnotify = true\nexec = [\"/bin/bash\", \"-c\", \(String(reflecting: script))]"])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1")
        try harness.wait(for: "agent-ready")
        let agentPID = try #require(try harness.agent().pid)
        let orphan = try #require(Int32(String(contentsOfFile: marker, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        let agentExit = try #require(ProcessExitWatch(agentPID))
        harness.killDaemon()
        #expect(agentExit.wait(seconds: 10), "the agent dies with backstopd")
        #expect(ProcessTable.isAlive(orphan), "SIGKILL gives the daemon no chance to stop what the agent left in another session")

        try harness.start()
        try harness.log.wait(for: "left running by a previous backstopd", seconds: 10)
        try harness.wait(for: "agent-ready")
        #expect(!ProcessTable.isAlive(orphan))
        let agent = try harness.agent()
        #expect(agent.pid != orphan)
        #expect(agent.pid != agentPID)
        #expect(agent.failures.recent == 0)
    }

    @Test("An agent that cleared its environment (and Backstop's mark) and outlived a killed daemon is found by its run record and stopped by the next one")
    func unmarkedOrphanIsReaped() throws {
        // Run as nobody (the default sandbox): the kernel drops bwrap's death signal at the user change.
        let harness = try DaemonHarness(agents: ["""
            name = "bare"
            exec = ["/usr/bin/env", "-i", "/bin/sleep", "600"]
            [agent.sandbox]
            private_network = true
            """])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1", agent: "bare")
        try harness.wait(for: "agent-ready")
        let orphan = try #require(try harness.agent("bare").pid)
        #expect(!ProcessTable.hasEnvironment(orphan, name: LaunchRequest.storeVariable, value: harness.directory + "/state/bare"),
                "the agent carries no mark")
        harness.killDaemon()
        #expect(ProcessTable.isAlive(orphan))

        try harness.start()
        try harness.log.wait(for: "Killing agent bare (pid \(orphan)), left running by a previous backstopd", seconds: 10)
        try harness.wait(for: "agent-ready")
        #expect(!ProcessTable.isAlive(orphan))
        #expect(try harness.agent("bare").pid != orphan)
    }

    @Test("A program that cannot be executed is retried with backoff; its content is not blamed")
    func execFailureIsNotBlamedOnContent() throws {
        let harness = try DaemonHarness(agents: ["""
            name = "missing"
            exec = ["/nonexistent/agent", "{content}"]
            """])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1", agent: "missing")
        try harness.log.wait(for: "reason=exec-failed", count: 4, seconds: 20)
        #expect(!harness.log.all.contains { $0.contains("event=crash-loop") || $0.contains("event=content-quarantined") })
        let (report, exitCode) = try harness.status()
        let agent = try #require(report.agents.first)
        #expect(agent.state == "backoff")
        #expect(agent.content.candidate == "v1")
        #expect(agent.content.quarantined.isEmpty)
        #expect(agent.failures.list.allSatisfy { $0.reason == "exec-failed" })
        #expect(exitCode == 1)
    }

    @Test("The boot is judged good once every agent has been ready for boot_good_after_sec")
    func bootAssessed() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: "boot_good_after_sec = 1")])
        defer { harness.cleanUp() }
        try harness.start()
        #expect(try harness.status().report.boot.state == "pending")
        try harness.stage(Paths.sample("v1-good"), as: "v1")
        try harness.wait(for: "boot-assessed", seconds: 10)
        let report = try harness.status().report
        #expect(report.boot.state == "good")
        #expect(report.boot.id.count == 32)
        #expect(harness.log.all.contains { $0.contains("[event=boot-assessed agent=demo version=v1 reason=good]") })

        // `boots` lists it, from the daemon and from the saved log when the daemon is down.
        let live = try harness.ctl("boots", "--json")
        #expect(live.status == 0)
        let boots = try JSONDecoder.backstop.decode([String: [BootRecord]].self, from: Data(live.output.utf8))["boots"] ?? []
        #expect(boots.last?.id == report.boot.id)
        #expect(boots.last?.state == "good")
        harness.stop()
        let saved = try harness.ctl("boots", "--no-legend")
        #expect(saved.status == 0)
        #expect(saved.output.hasPrefix("* \(report.boot.id) "))
        #expect(saved.output.contains(" good "))
        #expect(saved.error.contains("not running"))
        #expect(try harness.status().report.boot.state == "good", "status without the daemon reads the boot log too")
    }

    @Test("status without a readable configuration exits 4 (unknown), not 1 (degraded)")
    func statusWithoutConfiguration() throws {
        let result = try Command.run(Paths.binary("backstopctl"), ["status", "--config", "/nonexistent/backstop.toml"])
        #expect(result.status == 4)
        #expect(result.error.contains("/nonexistent/backstop.toml"))
    }

    @Test("backstopd --check-config names the file, line and key, and the daemon refuses to start")
    func badConfiguration() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let path = scratch.path + "/backstop.toml"
        try """
            [[agent]]
            name = "demo"
            exec = ["/bin/true"]
            failure_window_sec = 0
            """.write(toFile: path, atomically: true, encoding: .utf8)
        for arguments in [["--check-config", "--config", path], ["--config", path]] {
            let result = try Command.run(Paths.binary("backstopd"), arguments)
            #expect(result.status == 1)
            #expect(result.error.contains("\(path):4: agent[0].failure_window_sec: must be greater than zero"))
        }
    }
}

/// backstopd as systemd sees it: the sd_notify(3) messages it sends to `NOTIFY_SOCKET`.
@Suite(
    .serialized, .timeLimit(.minutes(1)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct ServiceManagerTests {
    @Test("READY=1 after the agents are started, WATCHDOG=1 at half WATCHDOG_USEC, STOPPING=1 on SIGTERM")
    func notifyAndWatchdog() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let received = LineCollector()
        let socket = try NotifySocket(path: scratch.path + "/notify", queue: DispatchQueue(label: "test.notify")) { message in
            received.append(message)
        }
        defer { socket.invalidate() }
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        try harness.start(environment: ["NOTIFY_SOCKET": scratch.path + "/notify", "WATCHDOG_USEC": "400000"])
        try received.wait(for: "READY=1", seconds: 10)
        // 200 ms apart: three pings come within a second.
        try received.wait(for: "WATCHDOG=1", count: 3, seconds: 5)
        harness.stop()
        try received.wait(for: "STOPPING=1", seconds: 10)
        #expect(received.all.firstIndex { $0.contains("READY=1") }! < received.all.firstIndex { $0.contains("WATCHDOG=1") }!)
    }
}

/// The end of a process that is not the test's child, seen on its pidfd (pidfd_open(2), poll(2)).
struct ProcessExitWatch {
    let descriptor: Int32

    init?(_ pid: Int32) {
        descriptor = backstop_pidfd_open(pid)
        if descriptor < 0 { return nil }
    }

    /// Whether the process ended within `seconds`; closes the pidfd.
    func wait(seconds: Double) -> Bool {
        defer { close(descriptor) }
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, Int32(seconds * 1000)) == 1
    }
}
