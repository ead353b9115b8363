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

    /// Runs `body` with a booted container (see ``Container/init(config:files:masked:)``);
    /// any failure carries the journal of the boot it happened in.
    func withContainer(
        config: String = Self.config, files: [String: String] = [:], masked: [String] = Container.masked,
        _ body: (Container) throws -> Void
    ) throws {
        try Container.booted(config: config, files: files, masked: masked, body)
    }

    /// Stages `good` (a directory in the container) as v1 and promotes it, then stages `candidate` as v2 and activates it.
    func knownGoodThenCandidate(
        _ container: Container, agent: String = "demo", good: String = Self.sample("v1-good"), candidate: String
    ) throws {
        try #require(try container.run("/usr/bin/backstopctl", "stage", agent, good, "--version", "v1", "--activate").status == 0)
        try container.waitForDecision("agent-ready")
        try #require(try container.run("/usr/bin/backstopctl", "promote", agent, "v1").status == 0)
        try #require(try container.run("/usr/bin/backstopctl", "stage", agent, candidate, "--version", "v2", "--activate").status == 0)
    }

    /// Waits for the crash-loop rollback from v2 to v1 and for the agent to be ready on v1 again.
    /// - Returns: the agent's status after it.
    @discardableResult
    func expectRolledBack(_ container: Container) throws -> StatusReport.Agent {
        try container.waitForDecision("rollback", reason: "crash-loop")
        try container.waitForDecision("agent-ready", version: "v1", count: 2)
        let agent = try #require(try container.status().agents.first)
        #expect(agent.content.active == "v1")
        #expect(agent.content.quarantined == ["v2"])
        #expect(agent.state == "running")
        return agent
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

    @Test("backstopctl stage takes a bundle from the caller's /tmp, and from a caller's private /tmp (a service with PrivateTmp=yes) that backstopd cannot see")
    func stageFromCallersTmp() throws {
        try withContainer { container in
            let copied = try container.run("/bin/cp", "-r", Self.sample("v3-good"), "/tmp/v3")
            try #require(copied.status == 0, "\(copied.error)")
            let staged = try container.run("/usr/bin/backstopctl", "stage", "demo", "/tmp/v3", "--version", "v3")
            #expect(staged.status == 0, "\(staged.error)")
            #expect(staged.output.contains("Staged v3 for demo (4 files"), "\(staged.output)")
            // As configuration management would run it: a service of its own with a private /tmp.
            let script = "cp -r \(Self.sample("v1-good")) /tmp/v1 && exec /usr/bin/backstopctl stage demo /tmp/v1 --version v1"
            let fromService = try container.run("/usr/bin/systemd-run", "--wait", "--pipe", "--quiet", "-p", "PrivateTmp=yes", "/bin/sh", "-c", script)
            #expect(fromService.status == 0, "\(fromService.output) \(fromService.error)")
            #expect(fromService.output.contains("Staged v1 for demo (3 files"), "\(fromService.output)")
            #expect(try container.run("/usr/bin/test", "-e", "/tmp/v1").status != 0, "the bundle was in the caller's /tmp only")
        }
    }

    @Test("content_link below /etc: under the shipped unit the link is made and the agent reads its content through it; with a drop-in ProtectSystem=full, --check-config (systemctl reload) says the link cannot be made, and the next version is exec-failed, not started and not blamed")
    func contentLinkBelowEtc() throws {
        let config = """
            [[agent]]
            name = "demo"
            exec = ["/usr/libexec/backstop/backstop-demo-agent", "--content", "/etc/demo-rules"]
            content_link = "/etc/demo-rules"
            notify = true
            restart_delay_ms = 100
            """
        try withContainer(config: config) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v1")
            #expect(try container.run("/bin/readlink", "/etc/demo-rules").output == "/var/lib/backstop/demo/versions/v1\n")

            try container.run("/bin/mkdir", "-p", "/etc/systemd/system/backstopd.service.d")
            try container.run("/bin/sh", "-c", "printf '[Service]\\nProtectSystem=full\\n' > /etc/systemd/system/backstopd.service.d/protect.conf")
            try #require(try container.run("/bin/systemctl", "daemon-reload").status == 0)
            try #require(try container.run("/bin/systemctl", "restart", "backstopd").status == 0)
            try container.waitForDecision("agent-ready", version: "v1", count: 2)
            try #require(try container.run("/bin/systemctl", "reload", "backstopd").status == 0)
            let reload = try container.run("/bin/journalctl", "-b", "-u", "backstopd", "--no-pager", "-o", "cat")
            #expect(reload.output.contains("content_link /etc/demo-rules cannot be made: /etc is on a read-only mount"), "\(reload.output)")

            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v3-good"), "--version", "v2", "--activate").status == 0)
            try container.waitForDecision("agent-exited", reason: "exec-failed", version: "v2")
            let decisions = try container.decisions()
            #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == "agent-started" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" },
                    "never started on content it cannot find")
            #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == "content-quarantined" })
            let agent = try #require(try container.status().agents.first)
            #expect(agent.content.quarantined.isEmpty && agent.content.active == "v2", "the content is not blamed")
            #expect(agent.failures.recent == 0)
        }
    }

    @Test("a bad update crash-loops at runtime and is rolled back without a reboot")
    func runtimeCrashLoop() throws {
        try withContainer { container in
            try knownGoodThenCandidate(container, candidate: Self.sample("v2-channel-291"))
            try expectRolledBack(container)
            #expect(try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_SIGNAL"] == "SIGSEGV" }.count == 3)
        }
    }

    @Test("boot loop: power cut after the bad content loaded, boot after boot; on the boot after the threshold it is rolled back before the agent starts")
    func bootLoop() throws {
        try withContainer { container in
            try knownGoodThenCandidate(container, candidate: Self.sample("v3-good"))
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
            try knownGoodThenCandidate(container, candidate: Self.sample("v3-good"))
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

    @Test("a candidate that takes the machine down late, after boot-good but still in probation: boot_failure_threshold such boots roll it back before the agent starts")
    func lateCrashInProbation() throws {
        try withContainer { container in
            try knownGoodThenCandidate(container, candidate: Self.sample("v3-good"))
            // probation_sec (600) outlasts boot_good_after_sec (2): each boot is judged good with v2 still on trial.
            for boot in 1...2 {
                try container.waitForDecision("agent-ready", version: "v2")
                try container.waitForDecision("boot-assessed", reason: "good")
                let report = try container.status()
                try #require(report.boot.state == "good")
                try #require(report.agents.first?.content.candidate == "v2", "in probation at the crash of boot \(boot)")
                container.powerCut()
                try container.boot()
                try container.waitForDecision("boot-assessed", reason: "failed")
            }
            try container.waitForDecision("rollback", reason: "boot-loop")
            try container.waitForDecision("agent-ready", version: "v1")
            let decisions = try container.decisions()
            let failed = try #require(decisions.first { $0["BACKSTOP_EVENT"] == "boot-assessed" && $0["BACKSTOP_REASON"] == "failed" })
            #expect(failed["MESSAGE"]?.contains("reached boot-good but ended without a clean shutdown while a candidate was in probation (demo v2)") == true, "\(failed)")
            let events = decisions.map { $0["BACKSTOP_EVENT"] ?? "" }
            let rollback = try #require(events.firstIndex(of: "rollback"))
            let started = try #require(events.firstIndex(of: "agent-started"))
            #expect(rollback < started, "rolled back before the agent started: \(events)")
            #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == "agent-started" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" })
            let report = try container.status()
            #expect(report.boot.consecutiveFailed == 2)
            let agent = try #require(report.agents.first)
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined == ["v2"])
            #expect(agent.lastRollback?.reason == "boot-loop")
            #expect(try container.run("/usr/bin/backstopctl", "status").status == 1, "degraded: rolled back")
            let boots = try container.run("/usr/bin/backstopctl", "boots", "--no-legend").output.split(separator: "\n")
            #expect(boots.prefix(2).allSatisfy { $0.contains(" failed ") && $0.contains("demo=v2") }, "\(boots)")
        }
    }

    @Test("power cuts before boot-good with unchanged known-good content: the boot loop is reported, the agent keeps running on it, status is degraded (exit 1)")
    func bootLoopWithoutCandidate() throws {
        // Every boot is cut before boot-good.
        let config = Self.config.replacingOccurrences(of: "boot_good_after_sec = 2", with: "boot_good_after_sec = 600")
        try withContainer(config: config) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v1")
            try #require(try container.run("/usr/bin/backstopctl", "promote", "demo", "v1").status == 0)
            for _ in 1...3 {
                try container.waitForDecision("agent-ready", version: "v1")
                container.powerCut()
                try container.boot()
            }
            try container.waitForDecision("boot-assessed", reason: "boot-loop")
            try container.waitForDecision("agent-ready", version: "v1")
            let decisions = try container.decisions()
            let loop = try #require(decisions.first { $0["BACKSTOP_EVENT"] == "boot-assessed" && $0["BACKSTOP_REASON"] == "boot-loop" })
            #expect(loop["MESSAGE"]?.contains("boot loop: 3 failed boots, no candidate content to roll back") == true, "\(loop)")
            #expect(loop["BACKSTOP_FAILURES"] == "3")
            for event in ["rollback", "safe-mode", "gave-up", "content-quarantined"] {
                #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == event }, "\(event) on boot evidence alone")
            }
            let report = try container.status()
            #expect(report.boot.consecutiveFailed == 3)
            let agent = try #require(report.agents.first)
            #expect(agent.state == "running")
            #expect(agent.pid != nil)
            #expect(agent.content.active == "v1")
            #expect(agent.content.knownGood == "v1")
            #expect(agent.content.quarantined.isEmpty)
            #expect(agent.degraded)
            #expect(agent.degradedReason == "boot loop: 3 failed boots, no candidate content to roll back")
            #expect(agent.bootLoop?.failedBoots == 3)
            #expect(agent.escalation == nil)
            let text = try container.run("/usr/bin/backstopctl", "status")
            #expect(text.status == 1, "degraded")
            #expect(text.output.contains("Degraded: boot loop: 3 failed boots, no candidate content to roll back"), "\(text.output)")
            // Cleared by an operator.
            try #require(try container.run("/usr/bin/backstopctl", "reset-failed", "demo").status == 0)
            #expect(try container.run("/usr/bin/backstopctl", "status").status == 0)
        }
    }

    @Test("power cuts during the preflight of a staged version count against it, not against the known-good content that runs: boot_failure_threshold of them quarantine it, and the agent keeps running")
    func crashDuringPreflight() throws {
        try withContainer { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v1")
            try #require(try container.run("/usr/bin/backstopctl", "promote", "demo", "v1").status == 0)
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v3-good"), "--version", "v3").status == 0)
            // From now on a version runs in a preflight instance for 5 minutes before it is activated.
            try (Self.config + "\npreflight_sec = 300\n").write(toFile: container.directory + "/etc/backstop.toml", atomically: true, encoding: .utf8)
            try #require(try container.run("/bin/systemctl", "reload", "backstopd").status == 0)
            try container.waitInBoot("the reload") { lines in lines.contains { $0.contains("Reloaded /etc/backstop/backstop.toml") } }
            for boot in 1...2 {
                try container.waitForDecision("agent-ready", version: "v1")
                // As a fleet's updater would, at every boot; the machine dies while the preflight runs.
                try #require(try container.run("/usr/bin/systemd-run", "--no-block", "--quiet", "/usr/bin/backstopctl", "activate", "demo", "v3").status == 0)
                try container.waitInBoot("the preflight of v3") { lines in lines.contains { $0.contains("Preflight of content v3") } }
                let log = try String(contentsOfFile: container.directory + "/state/boots.json", encoding: .utf8)
                try #require(log.contains(#""preflight":"v3""#), "recorded before the instance starts: \(log)")
                container.powerCut()
                try container.boot()
                try container.waitForDecision("boot-assessed", reason: "failed")
                let verdict = try #require(try container.decisions().first { $0["BACKSTOP_EVENT"] == "boot-assessed" && $0["BACKSTOP_REASON"] == "failed" })
                #expect(verdict["MESSAGE"]?.contains("it counts against content v3 of agent demo, whose preflight was running, not against v1: \(boot)") == true, "\(verdict)")
            }
            try container.waitForDecision("content-quarantined", reason: "boot-loop", version: "v3")
            try container.waitForDecision("agent-ready", version: "v1")
            let decisions = try container.decisions()
            for event in ["rollback", "safe-mode", "gave-up"] {
                #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == event }, "\(event): the known-good content is not blamed")
            }
            let report = try container.status()
            #expect(report.boot.consecutiveFailed == 2)
            let agent = try #require(report.agents.first)
            #expect(agent.state == "running")
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined == ["v3"])
            #expect(agent.bootLoop == nil)
            let refused = try container.run("/usr/bin/backstopctl", "activate", "demo", "v3")
            #expect(refused.status != 0)
            #expect(refused.error.contains("quarantined"), "\(refused.error)")
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
        try withContainer(config: Self.unitConfig, files: ["/etc/systemd/system/demo-agent.service": Self.demoUnit]) { container in
            try knownGoodThenCandidate(container, candidate: Self.sample("v2-channel-291"))
            let agent = try expectRolledBack(container)
            let crashes = try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_REASON"] == "crashed" }
            #expect(crashes.count == 3)
            #expect(crashes.allSatisfy { $0["BACKSTOP_SIGNAL"] == "SIGSEGV" })
            let shown = try container.run("/bin/systemctl", "show", "demo-agent", "-p", "ActiveState", "-p", "NRestarts", "-p", "MainPID").output
            #expect(shown.contains("ActiveState=active"))
            #expect(shown.contains("NRestarts=0"), "systemd's own Restart= is handed to Backstop: \(shown)")
            #expect(shown.contains("MainPID=\(agent.pid ?? -1)"))

            // The unit runs as root, yet sees Backstop's state and content read-only.
            for path in ["/var/lib/backstop/demo/versions/v1/channel-100.conf", "/var/lib/backstop/demo/state.json"] {
                let write = try container.run(
                    "/usr/bin/nsenter", "-t", "\(agent.pid ?? -1)", "-m", "/bin/sh", "-c", "echo tampered >> \(path)")
                #expect(write.status != 0 && write.error.contains("Read-only file system"), "\(path): \(write)")
            }

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

            // backstopd restarting leaves the unit alone; the next one supervises the same process.
            let pid = try #require(status.pid)
            try container.run("/bin/systemctl", "restart", "backstopd")
            try container.waitForDecision("agent-ready", version: "v1", count: 4)
            status = try #require(try container.status().agents.first)
            #expect(status.state == "running")
            #expect(status.pid == pid)
            #expect(try container.run("/bin/systemctl", "show", "demo-agent", "-p", "MainPID").output.contains("MainPID=\(pid)"))
        }
    }

    @Test("the systemd engine: the drop-in of `backstopctl sandbox --drop-in` scores 3.0 or lower in systemd-analyze security, and the sandboxed unit still gets its bad content rolled back")
    func unitSandbox() throws {
        try withContainer(config: Self.unitConfig, files: ["/etc/systemd/system/demo-agent.service": Self.demoUnit]) { container in
            let before = try container.run("/usr/bin/backstopctl", "sandbox", "demo").output
            #expect(before.contains("is not installed, so demo-agent.service runs without this sandbox"), "\(before)")
            let installed = try container.run("/usr/bin/backstopctl", "sandbox", "demo", "--drop-in", "--install-root", "/")
            try #require(installed.status == 0, "\(installed)")
            try container.run("/bin/systemctl", "daemon-reload")
            let after = try container.run("/usr/bin/backstopctl", "sandbox", "demo").output
            #expect(after.contains("installed and up to date") && after.contains("not applied: nothing"), "\(after)")

            let analysis = try container.run("/usr/bin/systemd-analyze", "security", "--no-pager", "demo-agent.service").output
            let verdict = try #require(analysis.split(separator: "\n").first { $0.contains("Overall exposure level for demo-agent.service:") })
            let score = try #require(Double(verdict.split(separator: ":")[1].split(separator: " ")[0]))
            print("systemd-analyze security demo-agent.service with the default sandbox: exposure \(score)")
            #expect(score <= 3.0, "\(analysis)")

            try knownGoodThenCandidate(container, candidate: Self.sample("v2-channel-291"))
            let agent = try expectRolledBack(container)
            let identity = try container.run("/bin/sh", "-c", "grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/\(agent.pid ?? -1)/status").output
            #expect(identity.contains("Uid:\t65534") && identity.contains("CapEff:\t0000000000000000") && identity.contains("NoNewPrivs:\t1"), "\(identity)")
        }
    }

    @Test("engine = \"systemd\": an agent backstopd runs becomes a transient unit with its sandbox as properties; it scores 3.0 or lower, runs as nobody without capabilities, and its bad content is rolled back")
    func transientUnitSandbox() throws {
        let config = Self.config + """

            watchdog_sec = 10
            [agent.sandbox]
            engine = "systemd"
            memory_max = "256M"
            """
        try withContainer(config: config) { container in
            let report = try container.run("/usr/bin/backstopctl", "sandbox", "demo").output
            #expect(report.contains("transient unit backstop-demo.service") && report.contains("MemoryMax=256M"), "\(report)")
            try knownGoodThenCandidate(container, candidate: Self.sample("v2-channel-291"))
            let agent = try expectRolledBack(container)
            let crashes = try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_REASON"] == "crashed" }
            #expect(crashes.count == 3 && crashes.allSatisfy { $0["BACKSTOP_SIGNAL"] == "SIGSEGV" }, "\(crashes)")

            let shown = try container.run("/bin/systemctl", "show", "backstop-demo.service", "-p", "MainPID", "-p", "MemoryMax", "-p", "TasksMax", "-p", "User").output
            #expect(shown.contains("MainPID=\(agent.pid ?? -1)") && shown.contains("MemoryMax=268435456") && shown.contains("TasksMax=512") && shown.contains("User=nobody"), "\(shown)")
            let identity = try container.run("/bin/sh", "-c", "grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp)' /proc/\(agent.pid ?? -1)/status").output
            #expect(identity.contains("Uid:\t65534") && identity.contains("CapEff:\t0000000000000000") && identity.contains("NoNewPrivs:\t1") && identity.contains("Seccomp:\t2"), "\(identity)")

            let analysis = try container.run("/usr/bin/systemd-analyze", "security", "--no-pager", "backstop-demo.service").output
            let verdict = try #require(analysis.split(separator: "\n").first { $0.contains("Overall exposure level for backstop-demo.service:") })
            let score = try #require(Double(verdict.split(separator: ":")[1].split(separator: " ")[0]))
            print("systemd-analyze security backstop-demo.service (transient, default sandbox): exposure \(score)")
            #expect(score <= 3.0, "\(analysis)")
        }
    }

    /// A root agent without capabilities that tries, before it execs the demo agent, what
    /// would turn the service manager or Backstop against the host; each line of its result
    /// is `NAME=EXIT-STATUS`.
    static let escapeProbe = """
        {
          timeout 30 systemd-run --wait --pipe --quiet /bin/sh -c 'touch /root/escaped'; echo "systemd-run=$?"
          timeout 30 systemctl show --property=Version --value; echo "systemctl=$?"
          timeout 30 busctl --system call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.DBus.Peer Ping; echo "busctl=$?"
          test -e /run/backstop/io.backstop.Manager; echo "control-socket=$?"
          touch /run/backstop/agent-was-here; echo "runtime-writable=$?"
          touch /run/agent-was-here; echo "run-writable=$?"
          touch /home/agent-was-here; echo "home-writable=$?"
          timeout 5 python3 -c "import os; os.close(os.open('/run/initctl', os.O_WRONLY | os.O_NONBLOCK))"; echo "initctl=$?"
          timeout 5 python3 -c "import socket; socket.socket(socket.AF_UNIX).connect('/run/systemd/journal/io.systemd.journal')"; echo "journal-varlink=$?"
          echo "bwrap-processes=$(pgrep -x bwrap | wc -l)"
          reached=1; for pid in $(pgrep -x bwrap); do ls "/proc/$pid/root/" >/dev/null 2>&1 && reached=0; done; echo "bwrap-root=$reached"
        } > /var/lib/probe/result.new 2>&1
        mv /var/lib/probe/result.new /var/lib/probe/result
        exec /usr/libexec/backstop/backstop-demo-agent --content "$1"

        """

    /// How the escape probe runs: bubblewrap, a transient unit (engine = "systemd"), or its own
    /// unit with the drop-in of `backstopctl sandbox --drop-in` (runner = "systemd"); beside
    /// it, the demo agent under bubblewrap, whose bwrap process the probe tries to reach.
    enum ProbeSetup: String, CaseIterable, CustomTestStringConvertible {
        case bubblewrap, transientUnit, unitWithDropIn
        var testDescription: String { rawValue }
        var config: String {
            let sandbox = """
                [agent.sandbox]
                user = "root"
                capabilities = []
                read_write_paths = ["/var/lib/probe"]
                inaccessible_paths = ["/root", "/run/user"]
                """
            let bystander = """
                [[agent]]
                name = "bystander"
                exec = ["/usr/libexec/backstop/backstop-demo-agent", "--content", "{content}"]
                notify = true

                """
            switch self {
            case .bubblewrap, .transientUnit:
                return bystander + """
                    [[agent]]
                    name = "probe"
                    exec = ["/bin/sh", "/etc/probe.sh", "{content}"]
                    notify = true
                    \(sandbox)
                    \(self == .transientUnit ? "engine = \"systemd\"" : "")
                    """
            case .unitWithDropIn:
                return bystander + """
                    [[agent]]
                    name = "probe"
                    runner = "systemd"
                    unit = "probe.service"
                    content_link = "/var/lib/probe-content"
                    \(sandbox)
                    """
            }
        }
        var files: [String: String] {
            var files = ["/etc/probe.sh": ContainerTests.escapeProbe]
            if self == .unitWithDropIn {
                files["/etc/systemd/system/probe.service"] = "[Service]\nType=notify\nExecStart=/bin/sh /etc/probe.sh /var/lib/probe-content\n"
            }
            return files
        }
    }

    @Test("a root agent without capabilities cannot escape through the service manager (systemd-run, systemctl, busctl over the system D-Bus), cannot reach Backstop's control socket and cannot write /run or a /home it sees, in either engine", arguments: ProbeSetup.allCases)
    func rootAgentCannotEscape(_ setup: ProbeSetup) throws {
        try withContainer(config: setup.config, files: setup.files) { container in
            try #require(try container.run("/bin/mkdir", "-p", "/var/lib/probe").status == 0)
            if setup == .unitWithDropIn {
                let installed = try container.run("/usr/bin/backstopctl", "sandbox", "probe", "--drop-in", "--install-root", "/")
                try #require(installed.status == 0, "\(installed)")
                try container.run("/bin/systemctl", "daemon-reload")
            }
            let report = try container.run("/usr/bin/backstopctl", "sandbox", "probe").output
            #expect(report.contains("allow_service_manager") && report.contains("/run/systemd/private"), "the report names what it hides: \(report)")
            for path in ["/run/initctl", "/run/systemd/journal/io.systemd.journal"] {
                try #require(try container.run("/bin/test", "-e", path).status == 0, "\(path) exists outside the sandbox")
            }
            try #require(try container.run("/usr/bin/backstopctl", "stage", "bystander", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready")
            try #require(try container.run("/usr/bin/backstopctl", "stage", "probe", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", count: 2)
            let result = try container.run("/bin/cat", "/var/lib/probe/result").output
            #expect(!result.contains("bwrap-processes=0"), "the probe saw the bystander's bwrap process:\n\(result)")
            for probe in ["systemd-run", "systemctl", "busctl", "control-socket", "runtime-writable", "run-writable", "home-writable", "initctl", "journal-varlink", "bwrap-root"] {
                let line = result.split(separator: "\n").first { $0.hasPrefix(probe + "=") }
                #expect(line != nil && line != "\(probe)=0", "\(probe) must fail inside the sandbox; the agent saw:\n\(result)")
            }
            #expect(try container.run("/bin/test", "-e", "/root/escaped").status != 0, "no process outside the sandbox wrote /root")
            for path in ["/run/agent-was-here", "/home/agent-was-here"] {
                #expect(try container.run("/bin/test", "-e", path).status != 0, "the agent wrote nothing in /run or /home (it sees /home, read-only)")
            }
            #expect(try container.status().agents.allSatisfy { $0.state == "running" })
        }
    }

    @Test("bubblewrap under systemd: the sandboxed agent is moved into a transient scope whose cgroup carries memory_max and tasks_max")
    func bubblewrapAgentInScope() throws {
        try withContainer(config: Self.config + "\n[agent.sandbox]\nmemory_max = \"128M\"\ntasks_max = 64\n") { container in
            let report = try container.run("/usr/bin/backstopctl", "sandbox", "demo").output
            // memory_max is the scope's alone only with the unified hierarchy's memory controller (memoryMaxAsDeployed).
            let memoryCgroup = try container.run("/bin/cat", "/sys/fs/cgroup/cgroup.controllers").output.split(whereSeparator: \.isWhitespace).contains("memory")
            #expect(report.contains("TasksMax= of the transient scope")
                && report.contains(memoryCgroup ? "128M as MemoryMax= of the transient scope" : "128M as RLIMIT_DATA only (the transient scope cannot hold it here"), "\(report)")
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready")
            let pid = try #require(try container.status().agents.first?.pid)
            let cgroup = try container.run("/bin/cat", "/proc/\(pid)/cgroup").output
            #expect(cgroup.contains("backstop-demo-\(pid).scope"), "\(cgroup)")
            let shown = try container.run("/bin/systemctl", "show", "backstop-demo-\(pid).scope", "-p", "TasksMax", "-p", "MemoryMax", "-p", "ActiveState").output
            #expect(shown.contains("TasksMax=64") && shown.contains("MemoryMax=134217728") && shown.contains("ActiveState=active"), "\(shown)")
        }
    }

    @Test("a clean poweroff stops the agent's transient scope only after backstopd: no agent failure, no restart during shutdown")
    func cleanShutdownStopsScopeAfterDaemon() throws {
        try withContainer(config: Self.config + "\n[agent.sandbox]\ntasks_max = 64\n") { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready")
            let pid = try #require(try container.status().agents.first?.pid)
            let before = try container.run("/bin/systemctl", "show", "backstop-demo-\(pid).scope", "-p", "Before").output
            #expect(before.contains("backstopd.service"), "\(before)")
            try container.shutDown()
            try container.boot()
            try container.waitForDecision("agent-ready")
            let shutdown = try container.decisions(boot: -1)
            #expect(shutdown.filter { $0["BACKSTOP_EVENT"] == "agent-started" }.count == 1, "\(shutdown)")
            #expect(!shutdown.contains { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_REASON"] != nil }, "\(shutdown)")
            #expect(try container.status().agents.first?.failures.recent == 0)
        }
    }

    @Test("memory_max as deployed: where the container's cgroup hierarchy has the memory controller, a candidate that allocates past it is OOM-killed in its scope and reported as memory-limit naming the limit; where it has not, it stays RLIMIT_DATA, --check-config says so and the exits name the limit; either way the candidate is rolled back to the known-good version that ran within it")
    func memoryMaxAsDeployed() throws {
        // Holds the number of MiB its content's `megabytes` file says, each page written, then waits.
        let hog = "import os, time; n = int(open(os.environ['BACKSTOP_CONTENT'] + '/megabytes').read()); "
            + "hoard = [bytes([i % 256]) * (1 << 20) for i in range(n)]; time.sleep(3600)"
        let config = """
            [[agent]]
            name = "hog"
            exec = ["/usr/bin/python3", "-c", "\(hog)"]
            failure_window_sec = 60
            restart_delay_ms = 100
            [agent.sandbox]
            memory_max = "64M"
            """
        let files = ["/srv/hog/v1/megabytes": "8\n", "/srv/hog/v2/megabytes": "200\n"]
        try withContainer(config: config, files: files) { container in
            let controllers = try container.run("/bin/cat", "/sys/fs/cgroup/cgroup.controllers").output
            let memoryCgroup = controllers.split(whereSeparator: \.isWhitespace).contains("memory")
            let check = try container.run("/usr/sbin/backstopd", "--check-config")
            #expect(check.status == 0)
            let warning = "agent hog: sandbox: memory_max (64M) can only be an RLIMIT_DATA here"
            #expect(check.error.contains(warning) == !memoryCgroup, "memory controller: \(memoryCgroup); \(check.error)")
            let report = try container.run("/usr/bin/backstopctl", "sandbox", "hog").output
            #expect(report.contains(memoryCgroup ? "64M as MemoryMax= of the transient scope" : "64M as RLIMIT_DATA only (the transient scope cannot hold it here"), "\(report)")
            try knownGoodThenCandidate(container, agent: "hog", good: "/srv/hog/v1", candidate: "/srv/hog/v2")
            try container.waitForDecision("rollback", reason: "crash-loop")
            let exits = try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }
            #expect(!exits.isEmpty && exits.allSatisfy { $0["BACKSTOP_REASON"] == (memoryCgroup ? "memory-limit" : "exited") }, "\(exits)")
            let named = memoryCgroup ? "at memory_max 64M; counted against candidate v2" : "memory_max 64M holds this agent only as RLIMIT_DATA"
            #expect(exits.allSatisfy { $0["MESSAGE"]?.contains(named) == true }, "\(exits.map { $0["MESSAGE"] ?? "" })")
            try container.waitForDecision("agent-ready", version: "v1", count: 2)
            let agent = try #require(try container.status().agents.first)
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined == ["v2"])
            #expect(agent.state == "running")
        }
    }

    @Test("the systemd runner under systemctl restart, a SIGTERM to the agent, a systemd re-exec and a reboot")
    func unitOutsideActions() throws {
        try withContainer(config: Self.unitConfig, files: ["/etc/systemd/system/demo-agent.service": Self.demoUnit]) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v1")
            func mainPID() throws -> String {
                try container.run("/bin/systemctl", "show", "demo-agent", "-p", "MainPID", "--value").output.trimmingCharacters(in: .whitespacesAndNewlines)
            }

            // systemctl restart: one new process, still supervised, no fight over the unit.
            let before = try mainPID()
            #expect(try container.run("/bin/systemctl", "restart", "demo-agent").status == 0)
            try container.waitInBoot("the restart seen") { $0.contains { $0.contains("restarted outside Backstop") } }
            var agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(agent.pid.map(String.init) == (try mainPID()))
            #expect(try mainPID() != before)
            let lines = try container.run("/bin/journalctl", "-b", "-u", "demo-agent", "--no-pager", "-o", "cat").output
            #expect(lines.components(separatedBy: "Started demo-agent.service").count - 1 == 2, "started once by Backstop, once by the restart:\n\(lines)")
            #expect(!(try container.decisions()).contains { $0["BACKSTOP_EVENT"] == "agent-exited" }, "a restart is no end of the run")

            // A SIGTERM from someone else (the demo agent exits 0 on it): restarted, not counted, not an operator's stop.
            try container.run("/bin/kill", "-TERM", try mainPID())
            try container.waitForDecision("agent-exited", reason: "clean-exit")
            try container.waitForDecision("agent-ready", version: "v1", count: 2)
            agent = try #require(try container.status().agents.first)
            #expect(!agent.stoppedByOperator)
            #expect(agent.failures.recent == 0)

            // A clean reboot: systemd stops the unit before backstopd, which is no operator's stop.
            try container.shutDown()
            try container.boot()
            try container.waitForDecision("agent-ready", version: "v1")
            agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(!agent.stoppedByOperator)

            // systemd re-executes itself (as on its upgrade): Backstop watches the unit again and sees the next crash.
            try container.run("/bin/systemctl", "daemon-reexec")
            try container.waitInBoot("watching again after the re-exec") { $0.contains { $0.contains("Watching the agent's unit again") } }
            try container.run("/bin/kill", "-SEGV", try mainPID())
            try container.waitForDecision("agent-exited", reason: "crashed")
            try container.waitForDecision("agent-ready", version: "v1", count: 2)
        }
    }

    @Test("the systemd runner: an operator's stop during a backoff holds; backstopd stopping hands restarts back to the unit")
    func unitStopDuringBackoffAndDetach() throws {
        let config = Self.unitConfig.replacingOccurrences(of: "restart_delay_ms = 100", with: "restart_delay_ms = 5000")
        try withContainer(config: config, files: ["/etc/systemd/system/demo-agent.service": Self.demoUnit]) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v1")
            let pid = try container.run("/bin/systemctl", "show", "demo-agent", "-p", "MainPID", "--value").output
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try container.run("/bin/kill", "-SEGV", pid)
            try container.waitForDecision("agent-exited", reason: "crashed")
            #expect(try container.status().agents.first?.state == "backoff")
            #expect(try container.run("/bin/systemctl", "stop", "demo-agent").status == 0)
            try container.waitInBoot("the stop seen") { $0.contains { $0.contains("stopped outside Backstop") } }
            let agent = try #require(try container.status().agents.first)
            #expect(agent.state == "stopped")
            #expect(agent.stoppedByOperator)

            let dropIn = "/run/systemd/system/demo-agent.service.d/50-backstop.conf"
            #expect(try container.run("/bin/test", "-e", dropIn).status == 0)
            #expect(try container.run("/bin/systemctl", "show", "demo-agent", "-p", "Restart", "--value").output.hasPrefix("no"))
            try #require(try container.run("/bin/systemctl", "stop", "backstopd").status == 0)
            #expect(try container.run("/bin/test", "-e", dropIn).status != 0, "the drop-in goes with backstopd")
            #expect(try container.run("/bin/systemctl", "show", "demo-agent", "-p", "Restart", "--value").output.hasPrefix("on-failure"))
        }
    }

    @Test("a systemctl restart merged into Backstop's own start job is a restart, not an end of the run")
    func restartDuringStart() throws {
        let unit = Self.demoUnit.replacingOccurrences(of: "[Service]", with: "[Service]\nExecStartPre=/bin/sleep 2")
        try withContainer(config: Self.unitConfig + "\nclean_exit_is_failure = true\n",
                          files: ["/etc/systemd/system/demo-agent.service": unit]) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-started", version: "v1")
            #expect(try container.run("/bin/systemctl", "restart", "--no-block", "demo-agent").status == 0)
            try container.waitForDecision("agent-ready", version: "v1", seconds: 30)
            try container.waitInBoot("the restart seen") { $0.contains { $0.contains("restarted outside Backstop") } }
            let decisions = try container.decisions()
            #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == "agent-exited" }, "\(decisions.map { $0["MESSAGE"] ?? "" })")
            #expect(decisions.first { $0["BACKSTOP_EVENT"] == "agent-started" }?["MESSAGE"]?.contains("pid") == false,
                    "no pid 0 while ExecStartPre= runs")
            let agent = try #require(try container.status().agents.first)
            #expect(agent.failures.list.isEmpty)
            #expect(agent.state == "running")
        }
    }

    @Test("systemd's own start timeout of the unit is a start timeout, counted against the content")
    func unitStartTimeout() throws {
        let unit = """
            [Service]
            Type=notify
            ExecStart=/bin/sleep infinity
            TimeoutStartSec=1
            """
        try withContainer(config: Self.unitConfig + "\nfailure_threshold = 5\n", files: ["/etc/systemd/system/demo-agent.service": unit]) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-exited", reason: "start-timeout", seconds: 30)
            let agent = try #require(try container.status().agents.first)
            #expect(agent.failures.recent >= 1)
        }
    }

    /// Content for units whose start checks it: /srv/good has the `ok` file they test for, /srv/bad
    /// has not; both have the templates the demo agent needs.
    static let checkedContent = [
        "/srv/good/ok": "", "/srv/good/templates.conf": "template process_create fields=20\n",
        "/srv/bad/templates.conf": "template process_create fields=20\n",
    ]

    /// The agent's v2 exits, which must be three: one per start, with the status of the command that failed.
    func expectCandidateExits(_ container: Container, status: String) throws {
        let exits = try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }
        #expect(exits.count == 3, "counted once per start: \(exits.map { $0["MESSAGE"] ?? "" })")
        #expect(exits.allSatisfy { $0["BACKSTOP_REASON"] == "exited" && $0["BACKSTOP_EXIT_STATUS"] == status },
                "\(exits.map { ($0["BACKSTOP_REASON"] ?? "", $0["BACKSTOP_EXIT_STATUS"] ?? "") })")
    }

    /// A unit whose start checks its content with `test -f /var/lib/demo-content/ok`: in
    /// `ExecStartPre=` for each start type, or in `ExecStartPost=`.
    enum CheckedStart: String, CaseIterable, Sendable {
        case simplePre = "Type=simple, ExecStartPre="
        case execPre = "Type=exec, ExecStartPre="
        case notifyPre = "Type=notify, ExecStartPre="
        case simplePost = "Type=simple, ExecStartPost="

        var unit: String {
            let check = "/bin/sh -c 'test -f /var/lib/demo-content/ok'"
            return switch self {
            case .simplePre: "[Service]\nType=simple\nExecStartPre=\(check)\nExecStart=/bin/sleep infinity\n"
            case .execPre: "[Service]\nType=exec\nExecStartPre=\(check)\nExecStart=/bin/sleep infinity\n"
            case .notifyPre: "[Service]\nType=notify\nExecStartPre=\(check)\nExecStart=/usr/libexec/backstop/backstop-demo-agent --content /var/lib/demo-content\n"
            case .simplePost: "[Service]\nType=simple\nExecStart=/bin/sleep infinity\nExecStartPost=\(check)\n"
            }
        }
    }

    @Test("the systemd runner: a start command that fails on bad content is the content's failure with its exit status, counted once per start; the bad version is rolled back and quarantined, the good one runs", arguments: CheckedStart.allCases)
    func unitStartCommandFails(_ start: CheckedStart) throws {
        let unit = start.unit
        try withContainer(config: Self.unitConfig, files: Self.checkedContent.merging(["/etc/systemd/system/demo-agent.service": unit]) { $1 }) { container in
            try knownGoodThenCandidate(container, good: "/srv/good", candidate: "/srv/bad")
            let agent = try expectRolledBack(container)
            try expectCandidateExits(container, status: "1")
            #expect(agent.content.knownGood == "v1")
        }
    }

    @Test("the systemd runner: a Type=forking unit with a ready check is ready on good content and known-good; its start process failing on bad content is rolled back and quarantined")
    func forkingUnitWithReadyCheck() throws {
        let unit = """
            [Service]
            Type=forking
            ExecStart=/bin/sh -c 'test -f /var/lib/demo-content/ok || exit 3; /bin/sleep infinity & exit 0'
            """
        try withContainer(config: Self.unitConfig + "\nready_check_exec = [\"/bin/true\"]\n",
                          files: Self.checkedContent.merging(["/etc/systemd/system/demo-agent.service": unit]) { $1 }) { container in
            try knownGoodThenCandidate(container, good: "/srv/good", candidate: "/srv/bad")
            let agent = try expectRolledBack(container)
            try expectCandidateExits(container, status: "3")
            #expect(agent.content.knownGood == "v1")
            #expect(try container.run("/bin/systemctl", "show", "demo-agent", "-p", "MainPID").output.contains("MainPID=\(agent.pid ?? -1)"))
            #expect(agent.failures.list.allSatisfy { $0.version == "v2" }, "the good version never failed its start: \(agent.failures.list)")
        }
    }

    /// The demo agent's unit, refused by systemd until the operator fixes its surroundings:
    /// it needs a unit that fails until /run/prerequisite-ok exists, and /run/demo-enabled.
    static let refusedUnits = [
        "/etc/systemd/system/demo-agent.service": demoUnit.replacingOccurrences(of: "[Service]", with: """
            Requires=demo-prerequisite.service
            After=demo-prerequisite.service
            ConditionPathExists=/run/demo-enabled

            [Service]
            """),
        "/etc/systemd/system/demo-prerequisite.service": """
            [Service]
            Type=oneshot
            ExecStart=/bin/test -e /run/prerequisite-ok
            """,
    ]

    @Test("a unit that systemd refuses to start (a failed requirement, a condition not met) is a configuration error, not the content's")
    func refusedUnit() throws {
        try withContainer(config: Self.unitConfig, files: Self.refusedUnits) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitInBoot("the start refused for a failed requirement") { lines in
                lines.contains { $0.contains("\"BACKSTOP_REASON\":\"exec-failed\"") && $0.contains("a unit it requires did not start") }
            }
            try container.run("/bin/touch", "/run/prerequisite-ok")
            try container.waitInBoot("the start refused for a condition") { lines in
                lines.contains { $0.contains("\"BACKSTOP_REASON\":\"exec-failed\"") && $0.contains("a condition of the unit is not met") }
            }
            try container.run("/bin/touch", "/run/demo-enabled")
            try container.waitForDecision("agent-ready", version: "v1")
            let agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined.isEmpty)
            #expect(agent.failures.recent == 0, "refused starts do not count against the content")
            #expect(!agent.failures.list.isEmpty && agent.failures.list.allSatisfy { $0.reason == "exec-failed" })
            #expect(!(try container.decisions()).contains { $0["BACKSTOP_REASON"] == "start-timeout" }, "no start timeout stood in for the refusal")
        }
    }

    static let clamdConfig = """
        [[agent]]
        name = "clamd"
        runner = "systemd"
        unit = "clamav-daemon.service"
        content_link = "/var/lib/clamav"
        failure_window_sec = 60
        restart_delay_ms = 100
        boot_good_after_sec = 2
        """

    /// What Debian's clamav-daemon package sets up at installation, which a volatile container's
    /// empty /etc lacks: clamd.conf (this machine's), the clamav user, its log and run
    /// directories. The package's units start only when the official databases are there;
    /// this content is a signature database of its own, so that condition becomes "any".
    static func clamavFiles() throws -> [String: String] {
        let condition = "[Unit]\nConditionPathExistsGlob=\nConditionPathExists=/var/lib/clamav\n"
        return [
            "/etc/clamav/clamd.conf": try String(contentsOfFile: "/etc/clamav/clamd.conf", encoding: .utf8),
            "/etc/sysusers.d/clamav.conf": "u clamav - \"Clam AntiVirus\" /var/lib/clamav\n",
            "/etc/tmpfiles.d/clamav.conf": "d /var/log/clamav 0755 clamav clamav -\nd /run/clamav 0755 clamav clamav -\n",
            "/etc/systemd/system/clamav-daemon.service.d/content.conf": condition,
            "/etc/systemd/system/clamav-daemon.socket.d/content.conf": condition,
        ]
    }

    /// Asks clamd, over its socket, to scan `path`; returns its answer.
    func clamdScan(_ container: Container, _ path: String) throws -> String {
        let script = """
            import socket; s = socket.socket(socket.AF_UNIX); s.connect("/run/clamav/clamd.ctl")
            s.sendall(b"SCAN \(path)\\n"); print(s.recv(4096).decode().strip())
            """
        return try container.run("/usr/bin/python3", "-c", script).output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("clamav-daemon.service under the systemd runner: a malformed signature database is rolled back and clamd scans with the known-good one")
    func clamavDaemon() throws {
        try withContainer(
            config: Self.clamdConfig, files: try Self.clamavFiles(), masked: Container.masked.filter { $0 != "clamav-daemon.service" }
        ) { container in
            // A signature for the EICAR test file; the bad version adds a line clamd cannot parse.
            let eicar = #"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"#
            try container.run("/bin/sh", "-c", """
                mkdir -p /srv/v1 /srv/v2 && echo '44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature' > /srv/v1/test.hdb
                cp /srv/v1/test.hdb /srv/v2/ && echo 'Backstop.Malformed:0:*:not-hex' > /srv/v2/channel.ndb
                printf '%s' '\(eicar)' > /srv/eicar.com && chmod 0644 /srv/eicar.com
                """)
            try knownGoodThenCandidate(container, agent: "clamd", good: "/srv/v1", candidate: "/srv/v2")
            let agent = try expectRolledBack(container)
            let exits = try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }
            #expect(exits.count == 3)
            #expect(exits.allSatisfy { $0["BACKSTOP_REASON"] == "exited" }, "\(exits)")
            let shown = try container.run("/bin/systemctl", "show", "clamav-daemon", "-p", "ActiveState", "-p", "MainPID").output
            #expect(shown.contains("ActiveState=active"))
            #expect(shown.contains("MainPID=\(agent.pid ?? -1)"))
            // clamd answers with the known-good database loaded.
            let answer = try clamdScan(container, "/srv/eicar.com")
            #expect(answer == "/srv/eicar.com: Eicar-Test-Signature.UNOFFICIAL FOUND", "\(answer)")
        }
    }

    @Test("clamav-daemon.service, socket-activated, with the README's ready check (an empty stream scanned): clamd is ready only with a database loaded; a malformed database, which clamd answers PING on before it exits, is never ready, is rolled back and quarantined")
    func clamavDaemonReadyCheck() throws {
        let config = Self.clamdConfig + "\nready_check_exec = [\"/usr/bin/clamdscan\", \"--no-summary\", \"-\"]\n"
        try withContainer(
            config: config, files: try Self.clamavFiles(), masked: Container.masked.filter { $0 != "clamav-daemon.service" }
        ) { container in
            try container.run("/bin/sh", "-c", """
                mkdir -p /srv/v1 /srv/v2 && echo '44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature' > /srv/v1/test.hdb
                cp /srv/v1/test.hdb /srv/v2/ && echo 'Backstop.Malformed:0:*:not-hex' > /srv/v2/channel.ndb
                """)
            try knownGoodThenCandidate(container, agent: "clamd", good: "/srv/v1", candidate: "/srv/v2")
            try expectRolledBack(container)
            let decisions = try container.decisions()
            #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == "agent-ready" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }, "\(decisions)")
            #expect(decisions.filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }.count == 3)
        }
    }

    /// Stages a signature database for the EICAR test file as v1 of agent clamd and waits for clamd to be ready on it.
    func clamdOnGoodContent(_ container: Container) throws {
        try container.run("/bin/sh", "-c", "mkdir -p /srv/v1 && echo '44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature' > /srv/v1/test.hdb")
        try #require(try container.run("/usr/bin/backstopctl", "stage", "clamd", "/srv/v1", "--version", "v1", "--activate").status == 0)
        try container.waitForDecision("agent-ready", version: "v1")
    }

    /// The state of `unit` in the container (`ActiveState`).
    func activeState(_ container: Container, _ unit: String) throws -> String {
        try container.run("/bin/systemctl", "show", unit, "-p", "ActiveState", "--value").output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("clamav-daemon.service stopped by systemd with clamav-daemon.socket (its Requires=) is no operator's stop: it waits, degraded, and runs again once the socket is back")
    func clamavStoppedWithItsSocket() throws {
        try withContainer(
            config: Self.clamdConfig, files: try Self.clamavFiles(), masked: Container.masked.filter { $0 != "clamav-daemon.service" }
        ) { container in
            try clamdOnGoodContent(container)
            try #require(try container.run("/bin/systemctl", "stop", "clamav-daemon.socket").status == 0)
            try container.waitForDecision("agent-exited", version: "v1")
            var agent = try #require(try container.status().agents.first)
            #expect(agent.state == "stopped")
            #expect(!agent.stoppedByOperator, "systemd stopped it with the socket, no operator stopped clamd")
            #expect(agent.degraded && agent.degradedReason?.contains("waiting for clamav-daemon.socket") == true, "\(agent.degradedReason ?? "")")
            #expect(agent.failures.list.isEmpty, "not a failure")
            #expect(try activeState(container, "clamav-daemon.service") == "inactive")
            #expect(try activeState(container, "clamav-daemon.socket") == "inactive", "Backstop does not start the socket an operator stopped")
            #expect(try container.run("/usr/bin/backstopctl", "status", "clamd").status == 1)

            try #require(try container.run("/bin/systemctl", "start", "clamav-daemon.socket").status == 0)
            try container.waitForDecision("agent-ready", version: "v1", count: 2)
            agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(!agent.degraded)
            #expect(try activeState(container, "clamav-daemon.service") == "active")

            // An operator's own stop of the service leaves the socket up: that is still an operator's stop.
            try #require(try container.run("/bin/systemctl", "stop", "clamav-daemon.service").status == 0)
            try container.waitInBoot("the operator's stop") { $0.contains { $0.contains("stopped outside Backstop") } }
            agent = try #require(try container.status().agents.first)
            #expect(agent.state == "stopped" && agent.stoppedByOperator)
        }
    }

    @Test("clamd stopped with its socket is started at the next boot: no operator's stop is kept across a reboot")
    func stoppedWithItsSocketThenReboot() throws {
        // Not enabled: at boot only Backstop starts clamd (an enabled unit that systemd starts is supervised from then on).
        var files = try Self.clamavFiles()
        files["/etc/systemd/system-preset/00-backstop-test.preset"] = "disable clamav-daemon.service\n"
        try withContainer(config: Self.clamdConfig, files: files, masked: Container.masked.filter { $0 != "clamav-daemon.service" }) { container in
            #expect(try container.run("/bin/systemctl", "is-enabled", "clamav-daemon.service").output.hasPrefix("disabled"))
            try clamdOnGoodContent(container)
            try #require(try container.run("/bin/systemctl", "stop", "clamav-daemon.socket").status == 0)
            try container.waitForDecision("agent-exited", version: "v1")
            try container.shutDown()
            try container.boot()
            try container.waitForDecision("agent-ready", version: "v1")
            let agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(!agent.stoppedByOperator)
            #expect(try activeState(container, "clamav-daemon.service") == "active")
        }
    }

    @Test("while clamd waits for its socket, a rollback starts its unit (and the socket with it)")
    func rollbackStartsTheWaitingUnit() throws {
        try withContainer(
            config: Self.clamdConfig, files: try Self.clamavFiles(), masked: Container.masked.filter { $0 != "clamav-daemon.service" }
        ) { container in
            try clamdOnGoodContent(container)
            try #require(try container.run("/usr/bin/backstopctl", "promote", "clamd", "v1").status == 0)
            try container.run("/bin/sh", "-c", "mkdir -p /srv/v2 && cp /srv/v1/test.hdb /srv/v2/ && echo '275a021bbfb6489e54d471899f7db9d1:68:Other-Test-Signature' >> /srv/v2/test.hdb")
            try #require(try container.run("/usr/bin/backstopctl", "stage", "clamd", "/srv/v2", "--version", "v2", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v2")
            try #require(try container.run("/bin/systemctl", "stop", "clamav-daemon.socket").status == 0)
            try container.waitForDecision("agent-exited", version: "v1")
            #expect(try container.status().agents.first?.stoppedByOperator == false)
            try #require(try container.run("/usr/bin/backstopctl", "rollback", "clamd").status == 0)
            try container.waitForDecision("agent-ready", version: "v1", count: 2)
            let agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(agent.content.active == "v1")
            #expect(try activeState(container, "clamav-daemon.service") == "active")
            #expect(try activeState(container, "clamav-daemon.socket") == "active")
        }
    }

    @Test("clamav-daemon.socket hitting its trigger limit while clamd cannot start is no operator's stop: clamd runs again once it can")
    func clamavSocketTriggerLimit() throws {
        var files = try Self.clamavFiles()
        // Debian's condition (the official databases) replaced by one the test turns off and on.
        files["/etc/systemd/system/clamav-daemon.service.d/enabled.conf"] = "[Unit]\nConditionPathExists=/run/clamd-enabled\n"
        files["/etc/systemd/system/clamav-daemon.socket.d/limit.conf"] = "[Socket]\nTriggerLimitIntervalSec=60s\nTriggerLimitBurst=5\n"
        let config = Self.clamdConfig.replacingOccurrences(of: "restart_delay_ms = 100", with: "restart_delay_ms = 2000")
        try withContainer(config: config, files: files, masked: Container.masked.filter { $0 != "clamav-daemon.service" }) { container in
            try container.run("/bin/touch", "/run/clamd-enabled")
            try clamdOnGoodContent(container)
            try container.run("/bin/rm", "/run/clamd-enabled")
            let pid = try container.run("/bin/systemctl", "show", "clamav-daemon", "-p", "MainPID", "--value").output
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try container.run("/bin/kill", "-KILL", pid)
            try container.waitForDecision("agent-exited", reason: "killed-externally")
            // A client of clamd: its connection triggers a start on the socket, skipped for the
            // condition, again and again, until the socket gives up.
            try container.run("/bin/sh", "-c", """
                timeout 10 python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("/run/clamav/clamd.ctl"); s.recv(1)' >/dev/null 2>&1 &
                """)
            let limit = try container.run("/bin/sh", "-c", "timeout 30 journalctl -u clamav-daemon.socket -f -n all | grep -m1 'Trigger limit hit'")
            #expect(limit.status == 0, "the socket hit its trigger limit: \(limit.output)")

            // clamd can start again: Backstop's next restart starts it, and the failed socket with it.
            try container.run("/bin/touch", "/run/clamd-enabled")
            try container.waitForDecision("agent-ready", version: "v1", count: 2, seconds: 90)
            let agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(!agent.stoppedByOperator, "no operator stopped clamd")
            #expect(agent.failures.recent == 0, "nothing of this counts against the content")
            #expect(try activeState(container, "clamav-daemon.service") == "active")
            #expect(try activeState(container, "clamav-daemon.socket") == "active", "started again with clamd, which requires it")
            let said = container.journalLines.all
            #expect(said.contains { $0.contains("Backstop did not ask for was skipped") }, "the skipped starts were seen as such")
            #expect(!said.contains { $0.contains("stopped outside Backstop") })
        }
    }

    @Test("a typo in the configuration, then systemctl restart: the agent runs on the last configuration that loaded, status is degraded naming the error; a reload of the fixed file keeps the agent's pid")
    func brokenConfigurationUnderTheUnit() throws {
        try withContainer { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready")
            let path = container.directory + "/etc/backstop.toml"
            let broken = Self.config + "\nfailure_treshold = 3\n"
            try broken.write(toFile: path, atomically: true, encoding: .utf8)
            let line = try #require(broken.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.hasPrefix("failure_treshold") }) + 1
            try #require(try container.run("/bin/systemctl", "restart", "backstopd").status == 0)
            try container.waitForDecision("agent-ready", count: 2)
            let status = try container.run("/usr/bin/backstopctl", "status", "--json")
            #expect(status.status == 1, "degraded: \(status.output)")
            let report = try container.status()
            #expect(report.daemon.configuration?.running == .lastGood)
            #expect(report.daemon.configuration?.error?.hasPrefix("/etc/backstop/backstop.toml:\(line): agent[0].failure_treshold: unknown key") == true,
                    "\(report.daemon.configuration?.error ?? "no error")")
            let agent = try #require(report.agents.first)
            #expect(agent.state == "running" && agent.content.active == "v1")
            let shown = try container.run("/bin/systemctl", "show", "backstopd", "-p", "ActiveState", "-p", "StatusText").output
            #expect(shown.contains("ActiveState=active") && shown.contains("the configuration file does not load"), "\(shown)")
            // A reload of the broken file fails with its error (ExecReload's check) and changes nothing.
            let refused = try container.run("/bin/systemctl", "reload", "backstopd")
            #expect(refused.status != 0)
            let unitLog = try container.run("/bin/journalctl", "-u", "backstopd", "--no-pager", "-o", "cat").output
            #expect(unitLog.contains("agent[0].failure_treshold: unknown key"), "\(unitLog)")
            #expect(try container.status().agents.first?.pid == agent.pid)
            // Fixed: the same tables as the last good copy, so the agent is untouched.
            try Self.config.write(toFile: path, atomically: true, encoding: .utf8)
            try #require(try container.run("/bin/systemctl", "reload", "backstopd").status == 0)
            try container.waitInBoot("the reload") { lines in lines.contains { $0.contains("Reloaded /etc/backstop/backstop.toml: 1 unchanged.") } }
            let after = try container.run("/usr/bin/backstopctl", "status", "--json")
            #expect(after.status == 0, "\(after.output)")
            #expect(try container.status().agents.first?.pid == agent.pid)
        }
    }

    @Test("reload with engine = \"systemd\": a changed agent's transient unit is restarted, a removed one's is stopped, and so is one left by a daemon whose configuration no longer has it")
    func reloadTransientUnits() throws {
        func transientAgent(_ extra: String = "") -> String {
            """

            [[agent]]
            name = "unitdemo"
            exec = ["/usr/libexec/backstop/backstop-demo-agent", "--content", "{content}"]
            notify = true
            \(extra)
            [agent.sandbox]
            engine = "systemd"
            """
        }
        let transient = transientAgent()
        let path = { (container: Container) in container.directory + "/etc/backstop.toml" }
        try withContainer(config: Self.config + transient) { container in
            for agent in ["demo", "unitdemo"] {
                try #require(try container.run("/usr/bin/backstopctl", "stage", agent, Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            }
            try container.waitForDecision("agent-ready", count: 2)
            let demo = try #require(try container.status().agents.first { $0.name == "demo" }?.pid)
            func unit() throws -> String {
                try container.run("/bin/systemctl", "show", "backstop-unitdemo.service", "-p", "ActiveState", "-p", "MainPID").output
            }
            func reload(_ config: String, expecting outcome: String) throws {
                try config.write(toFile: path(container), atomically: true, encoding: .utf8)
                try #require(try container.run("/bin/systemctl", "reload", "backstopd").status == 0)
                try container.waitInBoot(outcome) { lines in lines.contains { $0.contains(outcome) } }
            }
            let before = try unit()
            try reload(Self.config + transientAgent("failure_threshold = 4"), expecting: "restarted unitdemo; 1 unchanged.")
            try container.waitForDecision("agent-ready", count: 3)
            let restarted = try unit()
            #expect(restarted.contains("ActiveState=active") && restarted != before, "a new run: \(before) -> \(restarted)")
            try reload(Self.config, expecting: "removed unitdemo; 1 unchanged.")
            let removed = try unit()
            #expect(removed.contains("ActiveState=inactive"), "\(removed)")
            #expect(try container.status().agents.map(\.name) == ["demo"])

            // Back again, then removed across a restart of backstopd (which leaves units running as it stops).
            try reload(Self.config + transient, expecting: "added unitdemo; 1 unchanged.")
            try container.waitForDecision("agent-ready", count: 4)
            try Self.config.write(toFile: path(container), atomically: true, encoding: .utf8)
            try #require(try container.run("/bin/systemctl", "restart", "backstopd").status == 0)
            try container.waitInBoot("the left transient unit stopped") { lines in
                lines.contains { $0.contains("Stopping the transient unit of agent unitdemo, which is no longer configured.") }
            }
            try container.waitForDecision("agent-ready", count: 5)
            let left = try unit()
            #expect(left.contains("ActiveState=inactive") || left.contains("ActiveState=deactivating"), "\(left)")
            #expect(try container.status().agents.first?.pid != demo, "the restart restarted the direct agent, as before")
        }
    }

    @Test("the systemd runner: a unit systemd cannot set up (217/USER, a user that does not exist; 203/EXEC, an ExecStartPre= program that does not exist) is exec-failed, never counted against the content",
          arguments: ["User=backstop-no-such-user", "ExecStartPre=/usr/bin/backstop-no-such-program"])
    func unitSetUpFailure(_ setting: String) throws {
        let unit = Self.demoUnit + "\n\(setting)\n"
        try withContainer(config: Self.unitConfig, files: ["/etc/systemd/system/demo-agent.service": unit]) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-exited", reason: "exec-failed", version: "v1", count: 4)
            let decisions = try container.decisions()
            #expect(!decisions.contains { ["crash-loop", "rollback", "content-quarantined", "gave-up"].contains($0["BACKSTOP_EVENT"] ?? "") }, "\(decisions)")
            let agent = try #require(try container.status().agents.first)
            #expect(agent.content.active == "v1" && agent.content.quarantined.isEmpty && agent.failures.recent == 0, "\(agent)")
            #expect(agent.failures.list.allSatisfy { $0.reason == "exec-failed" && $0.attribution == "configuration" }, "\(agent.failures.list)")
        }
    }

    @Test("reload with the systemd runner: a changed agent keeps its unit running under Backstop; removed from the configuration, the unit is handed back to systemd, still running, its drop-in gone")
    func reloadHandsUnitBack() throws {
        try withContainer(config: Self.unitConfig, files: ["/etc/systemd/system/demo-agent.service": Self.demoUnit]) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", Self.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v1")
            let dropIn = "/run/systemd/system/demo-agent.service.d/50-backstop.conf"
            #expect(try container.run("/usr/bin/test", "-e", dropIn).status == 0)
            let before = try container.run("/bin/systemctl", "show", "demo-agent", "-p", "MainPID", "--value").output
            try (Self.unitConfig + "\nfailure_threshold = 4\n").write(toFile: container.directory + "/etc/backstop.toml", atomically: true, encoding: .utf8)
            try #require(try container.run("/bin/systemctl", "reload", "backstopd").status == 0)
            try container.waitInBoot("the reload") { lines in lines.contains { $0.contains("Reloaded /etc/backstop/backstop.toml: restarted demo.") } }
            #expect(try container.run("/usr/bin/test", "-e", dropIn).status == 0, "still Backstop's")
            let changed = try #require(try container.status().agents.first)
            #expect(changed.failures.threshold == 4 && changed.state == "running", "\(changed)")
            try "".write(toFile: container.directory + "/etc/backstop.toml", atomically: true, encoding: .utf8)
            try #require(try container.run("/bin/systemctl", "reload", "backstopd").status == 0)
            try container.waitInBoot("the reload") { lines in lines.contains { $0.contains("Reloaded /etc/backstop/backstop.toml: removed demo.") } }
            #expect(try container.run("/usr/bin/test", "-e", dropIn).status != 0, "the drop-in is gone")
            let shown = try container.run("/bin/systemctl", "show", "demo-agent", "-p", "ActiveState", "-p", "Restart", "-p", "MainPID").output
            #expect(shown.contains("ActiveState=active") && shown.contains("Restart=on-failure") && shown.contains("MainPID=\(before.trimmingCharacters(in: .whitespacesAndNewlines))"), "\(shown)")
            #expect(try container.status().agents.isEmpty)
        }
    }

    @Test("backstopd killed with SIGKILL in the middle of a rollback is restarted by systemd and ends consistent")
    func daemonKilledDuringRollback() throws {
        try withContainer { container in
            try knownGoodThenCandidate(container, candidate: Self.sample("v2-channel-291"))
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
