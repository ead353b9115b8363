import BackstopCore
import Foundation
import Testing

/// The main job with real processes: a real backstopd supervises real agents
/// (the demo agent, a shell script, ClamAV's clamd) and is driven by the real
/// backstopctl. Mutating control calls are allowed for root only, so these run as root.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct RollbackTests {
    /// Starts a daemon with the demo agent, stages v1 and promotes it to known-good.
    func daemonWithKnownGood(extra: String = "") throws -> DaemonHarness {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: extra)])
        do {
            try harness.start()
            try harness.stage(Paths.sample("v1-good"), as: "v1")
            try harness.wait(for: "agent-ready")
            let promoted = try harness.ctl("promote", "demo", "v1")
            #expect(promoted.status == 0, "promote: \(promoted.error)")
        } catch {
            harness.cleanUp()
            throw error
        }
        return harness
    }

    /// Activates `sample` as v2 and waits until Backstop has rolled back to v1 and the agent is ready on it.
    func expectRollback(_ harness: DaemonHarness, to sample: String, reason: String) throws -> StatusReport.Agent {
        try harness.stage(Paths.sample(sample), as: "v2")
        try harness.wait(for: "rollback", seconds: 60)
        try harness.wait(for: "agent-ready", after: "rollback")
        let (report, exitCode) = try harness.status()
        let agent = try #require(report.agents.first)
        #expect(agent.content.active == "v1")
        #expect(agent.content.knownGood == "v1")
        #expect(agent.content.candidate == nil)
        #expect(agent.content.quarantined == ["v2"])
        #expect(agent.state == "running")
        #expect(agent.lastRollback?.from == "v2")
        #expect(agent.lastRollback?.to == "v1")
        #expect(agent.lastRollback?.reason == "crash-loop")
        #expect(agent.degraded)
        #expect(exitCode == 1, "a rolled-back agent makes status exit 1")
        #expect(harness.log.all.contains { $0.contains("event=crash-loop") && $0.contains("version=v2") })
        let failures = harness.log.all.filter { $0.contains("reason=\(reason)") && $0.contains("version=v2") }
        #expect(failures.count >= 3, "expected 3 failures with reason \(reason)")
        // The active link names v1.
        let link = try FileManager.default.destinationOfSymbolicLink(atPath: harness.directory + "/state/demo/active")
        #expect(link == "versions/v1")
        return agent
    }

    @Test("A content update that crashes the agent (SIGSEGV) is rolled back and quarantined")
    func crashingUpdateIsRolledBack() throws {
        let harness = try daemonWithKnownGood()
        defer { harness.cleanUp() }
        _ = try expectRollback(harness, to: "v2-channel-291", reason: "crashed")
        #expect(harness.log.all.contains { $0.contains("signal SIGSEGV") })
        // reset-failed clears the degraded mark; the quarantine stays.
        #expect(try harness.ctl("reset-failed", "demo").status == 0)
        let (report, exitCode) = try harness.status()
        #expect(exitCode == 0)
        #expect(report.agents.first?.content.quarantined == ["v2"])
        // A quarantined version cannot be activated without a release.
        let refused = try harness.ctl("activate", "demo", "v2")
        #expect(refused.status == 1)
        #expect(refused.error.contains("quarantined"))
    }

    @Test("An update that makes the agent exit non-zero is rolled back")
    func exitingUpdateIsRolledBack() throws {
        let harness = try daemonWithKnownGood()
        defer { harness.cleanUp() }
        _ = try expectRollback(harness, to: "exit-error", reason: "exited")
        #expect(harness.log.all.contains { $0.contains("exit code 3") })
    }

    @Test("An update that hangs the agent (no watchdog heartbeat) is rolled back")
    func hangingUpdateIsRolledBack() throws {
        let harness = try daemonWithKnownGood(extra: "notify = true\nwatchdog_sec = 1")
        defer { harness.cleanUp() }
        _ = try expectRollback(harness, to: "hang", reason: "hung")
    }

    @Test("An update that makes the agent start too slowly misses start_timeout_sec and is rolled back")
    func slowUpdateIsRolledBack() throws {
        let harness = try daemonWithKnownGood(extra: "notify = true\nstart_timeout_sec = 1")
        defer { harness.cleanUp() }
        _ = try expectRollback(harness, to: "slow-start", reason: "start-timeout")
    }

    @Test("A slow start inside start_timeout_sec is not a failure: the candidate is promoted")
    func slowStartWithinTimeoutIsPromoted() throws {
        let harness = try daemonWithKnownGood(extra: "notify = true\nstart_timeout_sec = 20\nprobation_sec = 1")
        defer { harness.cleanUp() }
        try harness.stage(Paths.sample("slow-start"), as: "v2")
        try harness.wait(for: "content-promoted", count: 2, seconds: 30)
        let agent = try harness.agent()
        #expect(agent.content.active == "v2")
        #expect(agent.content.knownGood == "v2")
        #expect(agent.failures.recent == 0)
        #expect(agent.state == "running")
    }
}
