import Foundation
import Testing
@testable import BackstopCore

@Suite("Boot assessment: verdicts and boot loops")
struct BootAssessmentTests {
    let candidate = BootAgentRecord(active: "v2", candidate: "v2", mode: .normal)
    let knownGood = BootAgentRecord(active: "v1", candidate: nil, mode: .normal)

    func boot(_ id: String, _ agent: BootAgentRecord) -> BootRecord {
        BootRecord(id: id, startedAt: Date(timeIntervalSince1970: 0), state: "pending", agents: ["demo": agent])
    }

    @Test("a boot that was never good and did not shut down cleanly is failed at the next boot")
    func unfinishedBootFails() {
        var log = BootLog()
        #expect(log.enter(boot("b1", candidate)) == nil, "nothing to judge before the first boot")
        let verdict = log.enter(boot("b2", candidate))
        #expect(verdict?.record.id == "b1")
        #expect(verdict?.state == "failed")
        #expect(log.state(of: "b1") == "failed")
        #expect(log.state(of: "b2") == "pending")
        #expect(log.consecutiveFailed(before: "b2") == 1)
    }

    @Test("a clean shutdown is never a failed boot, good or not")
    func cleanShutdown() {
        var log = BootLog()
        _ = log.enter(boot("b1", candidate))
        log.markCleanShutdown("b1")
        #expect(log.enter(boot("b2", candidate))?.state == "stopped")
        log.markGood("b2")
        log.markCleanShutdown("b2")
        #expect(log.enter(boot("b3", candidate))?.state == "good")
        #expect(log.consecutiveFailed(before: "b3") == 0)
    }

    @Test("a good boot that ends uncleanly while a candidate is in probation is failed; without a candidate it stays good")
    func goodBootWithCandidateAtTheCrash() {
        var log = BootLog()
        _ = log.enter(boot("b1", knownGood))
        log.markGood("b1")
        // The update arrives on the running machine, after the boot was judged good.
        let changed = log.record("demo", candidate, in: "b1")
        let again = log.record("demo", candidate, in: "b1")
        #expect(changed)
        #expect(!again, "unchanged: nothing to save")
        let verdict = log.enter(boot("b2", candidate))
        #expect(verdict?.state == "failed")
        #expect(verdict?.explanation.contains("demo v2") == true)
        #expect(log.boots[0].versions == ["demo": "v2"], "the versions shown are the last ones of the boot")

        log.markGood("b2")
        let promoted = log.record("demo", knownGood, in: "b2")  // promoted or rolled back before the crash
        #expect(promoted)
        #expect(log.enter(boot("b3", knownGood))?.state == "good")
    }

    @Test("a daemon restart within one boot judges nothing and takes back the clean-shutdown mark")
    func restartWithinBoot() {
        var log = BootLog()
        _ = log.enter(boot("b1", candidate))
        log.markCleanShutdown("b1")
        #expect(log.enter(boot("b1", candidate)) == nil)
        #expect(log.boots.count == 1)
        #expect(log.boots[0].cleanShutdown == nil)
        #expect(log.enter(boot("b2", candidate))?.state == "failed")
    }

    @Test("failed boots in a row count only while the agent ran the same content")
    func failedBootsWithSameContent() {
        var log = BootLog()
        _ = log.enter(boot("b1", knownGood))
        _ = log.enter(boot("b2", candidate))
        _ = log.enter(boot("b3", candidate))
        _ = log.enter(boot("b4", candidate))
        #expect(log.consecutiveFailed(before: "b4") == 3)
        #expect(log.failedBootsInARow(agent: "demo", running: candidate, before: "b4") == 2)
        #expect(log.failedBootsInARow(agent: "demo", running: knownGood, before: "b4") == 0)
        #expect(log.failedBootsInARow(agent: "other", running: candidate, before: "b4") == 0)
    }

    @Test("a failed boot in which the agent was held stopped is no evidence against its content, and ends the row")
    func agentNotStarted() {
        var log = BootLog()
        var held = candidate
        held.started = false
        _ = log.enter(boot("b1", held))
        let marked = log.markStarted("demo", in: "b1")
        let markedAgain = log.markStarted("demo", in: "b1")
        let recordedAgain = log.record("demo", held, in: "b1")
        #expect(marked)
        #expect(!markedAgain, "unchanged: nothing to save")
        #expect(!recordedAgain, "the same content keeps its started mark")
        _ = log.enter(boot("b2", held))  // the agent was stopped by an operator in b2
        _ = log.enter(boot("b3", held))
        #expect(log.state(of: "b2") == "failed", "the machine still failed to boot")
        #expect(log.failedBootsInARow(agent: "demo", running: candidate, before: "b3") == 0)
        _ = log.markStarted("demo", in: "b3")
        _ = log.enter(boot("b4", held))
        #expect(log.failedBootsInARow(agent: "demo", running: candidate, before: "b4") == 1, "b3 counts, b2 ends the row")
        // A good boot that ended uncleanly fails for a candidate only if the agent ran it.
        log.markGood("b4")
        let verdict = log.enter(boot("b5", held))
        #expect(verdict?.state == "good")
    }

    @Test("the log keeps the last 100 boots and reads records written before agents were kept")
    func capacityAndOldRecords() throws {
        var log = BootLog()
        for index in 0..<130 { _ = log.enter(boot("b\(index)", knownGood)) }
        #expect(log.boots.count == BootLog.capacity)
        #expect(log.boots.first?.id == "b30")
        let old = #"{"boots":[{"id":"a","started_at":"2026-01-01T00:00:00Z","state":"good","versions":{"demo":"v1"}}]}"#
        let decoded = try JSONDecoder.backstop.decode(BootLog.self, from: Data(old.utf8))
        #expect(decoded.boots.first?.agents == nil)
        #expect(decoded.boots.first?.versions == ["demo": "v1"])
    }
}

@Suite("AgentPolicy: boot loops")
struct AgentPolicyBootLoopTests {
    @Test("a boot loop with a candidate quarantines it and rolls back before the agent starts")
    func candidateBootLoop() throws {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v2"))
        let actions = policy.bootLoop(failedBoots: 2, at: moment(5))
        #expect(actions.events == [.bootAssessed, .contentQuarantined, .rollback])
        #expect(actions.decision(.bootAssessed)?.reason == "boot-loop")
        #expect(actions.decision(.bootAssessed)?.failures == 2)
        #expect(actions.decision(.rollback)?.reason == "boot-loop")
        #expect(actions.decision(.contentQuarantined)?.message.contains("failed to boot 2 times") == true)
        let switchIndex = try #require(actions.firstIndex(of: .switchContent(version: "v1")))
        let spawnIndex = try #require(actions.firstIndex(of: .spawn(version: "v1", mode: .normal)))
        #expect(switchIndex < spawnIndex, "rolled back before the agent starts")
        #expect(actions.spawns == [.spawn(version: "v1", mode: .normal)], "v2 never runs")
        #expect(policy.ledger.quarantined == ["v2"])
        #expect(policy.lastRollback?.failure == "failed-boot")
    }

    @Test("boot loops on known-good content walk the ladder: older known-good, safe mode, give up")
    func knownGoodBootLoops() throws {
        var policy = AgentPolicy(
            settings: policySettings(safeModeExec: true), ledger: makeLedger(knownGood: ["v0", "v1"], active: "v1"))
        var actions = policy.bootLoop(failedBoots: 2, at: moment(1))
        #expect(actions.decision(.rollback)?.reason == "boot-loop-on-known-good")
        #expect(policy.ledger.active == "v0")

        // The same failed boots with v0: rolling back did not help, so the content stays and safe mode follows.
        policy = restarted(policy)
        actions = policy.bootLoop(failedBoots: 2, at: moment(1))
        #expect(actions.decision(.bootAssessed)?.reason == "rollback-did-not-help")
        #expect(actions.spawns == [.spawn(version: "v0", mode: .safeMode)])
        #expect(policy.degradedReason == "rollback did not help")

        policy = restarted(policy)
        actions = policy.bootLoop(failedBoots: 2, at: moment(1))
        #expect(actions.events.last == .gaveUp)
        #expect(actions.decision(.gaveUp)?.reason == "safe-mode-boot-loop")
        #expect(actions.spawns.isEmpty)
        #expect(policy.phase == .givenUp)
    }

    @Test("a boot loop of the first version, with nothing known-good behind it, leaves nothing active and the agent stopped")
    func firstVersionBootLoop() {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(staged: ["v1"], active: "v1"))
        let actions = policy.bootLoop(failedBoots: 3, at: moment(1))
        #expect(actions.contains(.switchContent(version: nil)))
        #expect(actions.spawns.isEmpty)
        #expect(policy.phase == .givenUp)
        #expect(policy.ledger.quarantined == ["v1"])
    }

    /// The policy as a new daemon process in a new boot restores it.
    func restarted(_ policy: AgentPolicy) -> AgentPolicy {
        var next = AgentPolicy(settings: policy.settings)
        next.restore(from: policy.stateFile(bootID: "old", at: moment(2)), currentBootID: "new")
        return next
    }
}
