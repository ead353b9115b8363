@testable import BackstopCore
import Foundation
import Testing

/// Boot assessment with the real daemon. A reboot is simulated by giving the boot the
/// daemon last ran in an ID of the past (in `boots.json` and the state file), as the
/// kernel does at every boot; the container tests boot a real systemd for the real thing.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct BootLoopTests {
    /// Starts a daemon with v1 known-good and v2 active as a candidate in probation.
    func daemonWithCandidate() throws -> DaemonHarness {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: "boot_failure_threshold = 2")])
        do {
            try harness.start()
            try harness.stage(Paths.sample("v1-good"), as: "v1")
            try harness.wait(for: "agent-ready")
            #expect(try harness.ctl("promote", "demo", "v1").status == 0)
            try harness.stage(Paths.sample("v3-good"), as: "v2")
            try harness.wait(for: "agent-ready", count: 2)
            #expect(try harness.agent().content.candidate == "v2")
        } catch {
            harness.cleanUp()
            throw error
        }
        return harness
    }

    /// Turns the boot the daemon ran in into a past boot with a made-up ID, and puts
    /// `failedBefore` failed boots with the same candidate before it.
    func reboot(_ harness: DaemonHarness, failedBefore: Int) throws -> String {
        let current = try BootID.current()
        let past = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        let bootsPath = harness.directory + "/state/boots.json"
        var text = try String(contentsOfFile: bootsPath, encoding: .utf8).replacingOccurrences(of: current, with: past)
        var log = try JSONDecoder.backstop.decode(BootLog.self, from: Data(text.utf8))
        let failed = (0..<failedBefore).map { index in
            var record = BootRecord(
                id: String(repeating: "b", count: 31) + String(index), startedAt: Date(), state: "failed",
                agents: ["demo": BootAgentRecord(active: "v2", candidate: "v2", mode: .normal)])
            record.startedAt = Date(timeIntervalSinceNow: -Double(600 * (failedBefore - index + 1)))
            return record
        }
        log.boots.insert(contentsOf: failed, at: max(0, log.boots.count - 1))
        text = String(decoding: try JSONEncoder.backstop.encode(log), as: UTF8.self)
        try text.write(toFile: bootsPath, atomically: true, encoding: .utf8)
        let statePath = harness.directory + "/state/demo/state.json"
        let state = try String(contentsOfFile: statePath, encoding: .utf8).replacingOccurrences(of: current, with: past)
        try state.write(toFile: statePath, atomically: true, encoding: .utf8)
        return past
    }

    @Test("boot_failure_threshold failed boots with the same candidate: rolled back and quarantined before the agent starts")
    func bootLoopRollsBackBeforeStart() throws {
        let harness = try daemonWithCandidate()
        defer { harness.cleanUp() }
        // A power cut while v2 is in probation (the daemon gets no chance to record a clean shutdown).
        harness.killDaemon()
        let past = try reboot(harness, failedBefore: 1)
        try harness.start()
        try harness.wait(for: "agent-ready")
        let lines = harness.log.all
        let verdict = try #require(lines.first { $0.contains("event=boot-assessed") && $0.contains("reason=failed") })
        #expect(verdict.contains(past))
        let loop = try #require(lines.firstIndex { $0.contains("event=boot-assessed") && $0.contains("reason=boot-loop") })
        let rollback = try #require(lines.firstIndex { $0.contains("event=rollback") && $0.contains("reason=boot-loop") })
        let started = try #require(lines.firstIndex { $0.contains("event=agent-started") })
        #expect(loop < rollback && rollback < started, "the rollback comes before the agent starts")
        #expect(!lines.contains { $0.contains("event=agent-started") && $0.contains("version=v2") }, "v2 never runs again")
        let (report, _) = try harness.status()
        #expect(report.boot.consecutiveFailed == 2)
        let agent = try #require(report.agents.first)
        #expect(agent.content.active == "v1")
        #expect(agent.content.quarantined == ["v2"])
        #expect(agent.lastRollback?.reason == "boot-loop")
        let boots = try harness.ctl("boots", "--no-legend").output
        #expect(boots.contains(past) && boots.contains("failed"))
        #expect(boots.split(separator: "\n").last?.contains("demo=v1") == true, "the current boot shows the rolled-back version")
    }

    @Test("a clean reboot during probation is not a failed boot: the candidate stays and starts its probation again")
    func cleanRebootIsNotFailed() throws {
        let harness = try daemonWithCandidate()
        defer { harness.cleanUp() }
        harness.stop()
        _ = try reboot(harness, failedBefore: 1)
        try harness.start()
        try harness.wait(for: "agent-ready")
        #expect(harness.log.all.contains { $0.contains("event=boot-assessed") && $0.contains("reason=stopped") })
        #expect(!harness.log.all.contains { $0.contains("event=rollback") })
        let (report, _) = try harness.status()
        #expect(report.boot.consecutiveFailed == 0)
        let agent = try #require(report.agents.first)
        #expect(agent.content.candidate == "v2")
        #expect(agent.probation?.elapsedSec ?? 600 < 60, "probation starts again after a reboot")
    }

    @Test("failed boots in which the agent was held stopped roll nothing back")
    func stoppedAgentIsNotBlamed() throws {
        let harness = try daemonWithCandidate()
        defer { harness.cleanUp() }
        #expect(try harness.ctl("stop", "demo").status == 0)
        // A power cut in the boot that ran v2, then one in a boot in which it stayed stopped.
        harness.killDaemon()
        _ = try reboot(harness, failedBefore: 0)
        try harness.start()
        try harness.wait(for: "boot-assessed")
        harness.killDaemon()
        _ = try reboot(harness, failedBefore: 0)
        try harness.start()
        try harness.wait(for: "boot-assessed")
        let verdict = try #require(harness.log.all.first { $0.contains("event=boot-assessed") })
        #expect(verdict.contains("Failed boots in a row: 2; it is no evidence against content v2 of agent demo (the agent was not started)."), "\(verdict)")
        #expect(!harness.log.all.contains { $0.contains("event=rollback") })
        #expect(try harness.status().0.boot.consecutiveFailed == 2, "the machine did fail to boot twice")
        let agent = try harness.agent()
        #expect(agent.content.active == "v2")
        #expect(agent.content.quarantined.isEmpty)
        #expect(agent.stoppedByOperator)
    }

    @Test("an unreadable boots.json is set aside and logged; the daemon starts a new log and runs the agent")
    func corruptBootLog() throws {
        let harness = try daemonWithCandidate()
        defer { harness.cleanUp() }
        harness.killDaemon()
        let bootsPath = harness.directory + "/state/boots.json"
        try #"{"boots":[{"id":"#.write(toFile: bootsPath, atomically: true, encoding: .utf8)
        try harness.start()
        try harness.wait(for: "agent-ready")
        let complaint = try #require(harness.log.all.first { $0.contains("The boot log is unreadable") })
        #expect(complaint.contains(bootsPath))
        let aside = try FileManager.default.contentsOfDirectory(atPath: harness.directory + "/state").filter { $0.hasPrefix("boots.json.corrupt-") }
        #expect(aside.count == 1)
        #expect(try String(contentsOfFile: harness.directory + "/state/" + aside[0], encoding: .utf8) == #"{"boots":[{"id":"#)
        let boots = try harness.ctl("boots", "--no-legend").output.split(separator: "\n")
        #expect(boots.count == 1, "a new log with the current boot: \(boots)")
    }

    @Test("one failed boot, below boot_failure_threshold, is recorded but rolls nothing back")
    func belowThreshold() throws {
        let harness = try daemonWithCandidate()
        defer { harness.cleanUp() }
        harness.killDaemon()
        _ = try reboot(harness, failedBefore: 0)
        try harness.start()
        try harness.wait(for: "agent-ready")
        #expect(harness.log.all.contains { $0.contains("event=boot-assessed") && $0.contains("reason=failed") })
        #expect(!harness.log.all.contains { $0.contains("event=rollback") })
        let (report, _) = try harness.status()
        #expect(report.boot.consecutiveFailed == 1)
        #expect(report.agents.first?.content.active == "v2")
    }
}
