@testable import BackstopCore
import Foundation
import Testing

/// End to end with systemd as PID 1: Backstop installed and enabled as a service in a
/// container that boots this machine's own tree, its state and journal kept across boots.
@Suite(
    .serialized, .timeLimit(.minutes(5)),
    .enabled(if: Container.available,
             "needs root, systemd-nspawn and an install tree in BACKSTOP_INSTALL_DIR (`make test` provides all three)"))
struct ContainerTests {
    static let config = """
        [[agent]]
        name = "demo"
        exec = ["/usr/libexec/backstop/backstop-demo-agent", "--content", "{content}"]
        notify = true
        failure_window_sec = 60
        restart_delay_ms = 100
        boot_good_after_sec = 2
        boot_failure_threshold = 2
        """

    /// The example content shipped by `make install`.
    static func sample(_ name: String) -> String { "/usr/share/backstop/examples/content/" + name }

    /// Runs `body` with a booted container; any failure carries the journal of the boot it happened in.
    func withContainer(_ body: (Container) throws -> Void) throws {
        let container = try Container(config: Self.config)
        defer { container.remove() }
        try container.boot()
        do { try body(container) } catch {
            throw HarnessError.failed("\(error)\n--- journal of the container's current boot ---\n\(container.journal())")
        }
    }

    /// Stages v1 and promotes it, then stages `candidate` as v2 and activates it.
    func knownGoodThenCandidate(_ container: Container, candidate: String) throws {
        try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
        try container.waitForDecision("agent-ready")
        try #require(try container.run("/usr/bin/backstopctl", "promote", "demo", "v1").status == 0)
        try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample(candidate), "--version", "v2", "--activate").status == 0)
    }

    @Test("backstopd runs as a healthy notify service with a watchdog")
    func healthyService() throws {
        try withContainer { container in
            let shown = try container.run("/bin/systemctl", "show", "backstopd", "-p", "Type", "-p", "ActiveState", "-p", "WatchdogUSec", "-p", "Restart").output
            #expect(shown.contains("Type=notify"))
            #expect(shown.contains("ActiveState=active"))
            #expect(shown.contains("WatchdogUSec=30s"))
            #expect(shown.contains("Restart=always"))
            let status = try container.run("/bin/systemctl", "status", "backstopd", "--no-pager").output
            #expect(status.contains("Status: \"Supervising 1 agent(s)\""), "\(status)")
            #expect(try container.status().daemon.running)
            // As after `make install`: the unit can be enabled.
            try #require(try container.run("/bin/systemctl", "enable", "backstopd").status == 0)
            #expect(try container.run("/bin/systemctl", "is-enabled", "backstopd").output.hasPrefix("enabled"))
        }
    }

    @Test("a bad update crash-loops at runtime and is rolled back without a reboot")
    func runtimeCrashLoop() throws {
        try withContainer { container in
            try knownGoodThenCandidate(container, candidate: "v2-channel-291")
            try container.waitForDecision("rollback", reason: "crash-loop")
            try container.waitForDecision("agent-ready", version: "v1", count: 2, seconds: 30)
            let agent = try #require(try container.status().agents.first)
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined == ["v2"])
            #expect(try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_SIGNAL"] == "SIGSEGV" }.count == 3)
        }
    }

    @Test("boot loop: power cut after the bad content loaded, boot after boot; on the boot after the threshold it is rolled back before the agent starts")
    func bootLoop() throws {
        try withContainer { container in
            try knownGoodThenCandidate(container, candidate: "v3-good")
            // The candidate takes the machine down once the agent has loaded it, on every boot.
            for _ in 0..<2 {
                try container.waitForDecision("agent-ready", version: "v2")
                let agent = try #require(try container.status().agents.first)
                try #require(agent.content.active == "v2")
                container.powerCut()
                try container.boot()
            }
            try container.waitForDecision("rollback", reason: "boot-loop")
            try container.waitForDecision("boot-assessed", reason: "good", seconds: 30)
            let decisions = try container.decisions()
            let events = decisions.map { $0["BACKSTOP_EVENT"] ?? "" }
            let rollback = try #require(events.firstIndex(of: "rollback"))
            let started = try #require(events.firstIndex(of: "agent-started"))
            #expect(rollback < started, "rolled back before the agent started: \(events)")
            #expect(decisions.contains { $0["BACKSTOP_EVENT"] == "boot-assessed" && $0["BACKSTOP_REASON"] == "failed" })
            #expect(decisions.contains { $0["BACKSTOP_EVENT"] == "boot-assessed" && $0["BACKSTOP_REASON"] == "boot-loop" })
            #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == "agent-started" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" })
            let report = try container.status()
            #expect(report.boot.consecutiveFailed == 2)
            #expect(report.boot.state == "good")
            let agent = try #require(report.agents.first)
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined == ["v2"])
            #expect(agent.lastRollback?.reason == "boot-loop")
            let boots = try container.run("/usr/bin/backstopctl", "boots", "--no-legend").output.split(separator: "\n")
            #expect(boots.count == 3)
            #expect(boots.prefix(2).allSatisfy { $0.contains(" failed ") && $0.contains("demo=v2") }, "\(boots)")
            #expect(boots.last?.contains("demo=v1") == true)
        }
    }

    @Test("a clean reboot during probation is not a failed boot")
    func cleanReboot() throws {
        try withContainer { container in
            try knownGoodThenCandidate(container, candidate: "v3-good")
            try container.waitForDecision("agent-ready", version: "v2")
            try container.shutDown()
            try container.boot()
            try container.waitForDecision("boot-assessed", reason: "stopped")
            try container.waitForDecision("agent-ready", version: "v2")
            let report = try container.status()
            #expect(report.boot.consecutiveFailed == 0)
            #expect(report.agents.first?.content.candidate == "v2")
            #expect(!(try container.decisions()).contains { $0["BACKSTOP_EVENT"] == "rollback" })
        }
    }

    static let unitConfig = """
        [[agent]]
        name = "demo"
        runner = "systemd"
        unit = "demo-agent.service"
        content_link = "/var/lib/demo-content"
        failure_window_sec = 60
        restart_delay_ms = 100
        boot_good_after_sec = 2
        """

    /// The demo agent as a unit of its own, with the Restart= an operator would give it.
    static let demoUnit = """
        [Unit]
        Description=The Backstop demo agent, as a unit of its own

        [Service]
        Type=notify
        ExecStart=/usr/libexec/backstop/backstop-demo-agent --content /var/lib/demo-content
        Restart=on-failure
        RestartSec=0
        """

    @Test("the systemd runner: the agent as its own unit is rolled back, restarted by Backstop alone, and an operator's stop is no failure")
    func systemdRunner() throws {
        let container = try Container(config: Self.unitConfig, units: ["demo-agent.service": Self.demoUnit])
        defer { container.remove() }
        try container.boot()
        do {
            try knownGoodThenCandidate(container, candidate: "v2-channel-291")
            try container.waitForDecision("rollback", reason: "crash-loop")
            try container.waitForDecision("agent-ready", version: "v1", count: 2)
            let agent = try #require(try container.status().agents.first)
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined == ["v2"])
            #expect(agent.state == "running")
            let crashes = try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_REASON"] == "crashed" }
            #expect(crashes.count == 3)
            #expect(crashes.allSatisfy { $0["BACKSTOP_SIGNAL"] == "SIGSEGV" })
            let shown = try container.run("/bin/systemctl", "show", "demo-agent", "-p", "ActiveState", "-p", "NRestarts", "-p", "MainPID").output
            #expect(shown.contains("ActiveState=active"))
            #expect(shown.contains("NRestarts=0"), "systemd's own Restart= is handed to Backstop: \(shown)")
            #expect(shown.contains("MainPID=\(agent.pid ?? -1)"))

            // An operator stops the unit: not a failure, and it stays stopped until started again.
            try container.run("/bin/systemctl", "stop", "demo-agent")
            try container.waitForDecision("agent-exited", version: "v1")
            var status = try #require(try container.status().agents.first)
            #expect(status.state == "stopped")
            #expect(status.stoppedByOperator)
            #expect(status.failures.list.allSatisfy { $0.version == "v2" }, "the stop is not a failure")
            try #require(try container.run("/usr/bin/backstopctl", "start", "demo").status == 0)
            try container.waitForDecision("agent-ready", version: "v1", count: 3)
            status = try #require(try container.status().agents.first)
            #expect(status.state == "running")
        } catch {
            throw HarnessError.failed("\(error)\n--- journal of the container's current boot ---\n\(container.journal())")
        }
    }

    @Test("backstopd killed with SIGKILL in the middle of a rollback is restarted by systemd and ends consistent")
    func daemonKilledDuringRollback() throws {
        try withContainer { container in
            try knownGoodThenCandidate(container, candidate: "v2-channel-291")
            try container.waitForDecision("crash-loop")
            try container.run("/bin/systemctl", "kill", "--signal=SIGKILL", "--kill-whom=main", "backstopd")
            // systemd starts it again (Restart=always); the new daemon finishes on v1.
            try container.waitInBoot("a second start of backstopd and the agent ready on v1 after it") { lines in
                guard let restart = lines.indices.filter({ lines[$0].contains("is running.") }).dropFirst().first else { return false }
                return lines[restart...].contains { $0.contains("\"BACKSTOP_EVENT\":\"agent-ready\"") && $0.contains("\"BACKSTOP_CONTENT_VERSION\":\"v1\"") }
            }
            let shown = try container.run("/bin/systemctl", "show", "backstopd", "-p", "NRestarts", "-p", "ActiveState").output
            #expect(shown.contains("ActiveState=active"))
            #expect(!shown.contains("NRestarts=0"))
            let agent = try #require(try container.status().agents.first)
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined == ["v2"])
            #expect(agent.state == "running")
            let demoAgents = try container.run("/bin/sh", "-c", "pgrep -c -f '^/usr/libexec/backstop/backstop-demo-agent'").output.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(demoAgents == "1", "exactly one agent runs")
        }
    }
}
