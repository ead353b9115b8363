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

    @Test("content in probation is blamed for a late crash: boot_failure_threshold good boots that end uncleanly roll the candidate back before the agent starts")
    func lateCrashInProbation() throws {
        // Probation 600 s outlasts boot_good_after_sec (120 s): the candidate is still on trial after boot-good.
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        var log = BootLog()
        _ = log.enter(boot("b1", knownGood))
        _ = policy.handle(.begin(), at: moment(0))
        policy.startAndBecomeReady(at: 0)
        log.markGood("b1")
        _ = try policy.activate("v2", at: moment(200))
        _ = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(200.5))
        policy.startAndBecomeReady(at: 201)
        _ = log.record("demo", BootAgentRecord(active: "v2", candidate: "v2", mode: .normal, started: false), in: "b1")
        _ = log.markStarted("demo", in: "b1")
        #expect(policy.ledger.candidate == "v2")
        // The power fails at 400 s, the candidate in probation; then again late in the next boot.
        for (index, id) in ["b2", "b3"].enumerated() {
            let verdict = log.enter(boot(id, candidate))
            #expect(verdict?.state == "failed")
            #expect(verdict?.explanation.contains("reached boot-good but ended without a clean shutdown while a candidate was in probation (demo v2)") == true)
            let failedBoots = log.failedBootsInARow(agent: "demo", running: candidate, before: id)
            #expect(failedBoots == index + 1)
            guard failedBoots < 2 else { break }
            policy = restarted(policy)
            let started = policy.handle(.begin(), at: moment(0))
            #expect(started.spawns == [.spawn(version: "v2", mode: .normal)], "one failed boot is below boot_failure_threshold")
            _ = log.markStarted("demo", in: id)
            policy.startAndBecomeReady(at: 0)
            let deadline = try #require(policy.timers[.probation])
            #expect(deadline > 120, "boot-good comes first")
            log.markGood(id)
        }
        policy = restarted(policy)
        let actions = policy.handle(.bootLoop(failedBoots: log.failedBootsInARow(agent: "demo", running: candidate, before: "b3")), at: moment(0))
        #expect(actions.events == [.bootAssessed, .contentQuarantined, .rollback])
        #expect(actions.spawns == [.spawn(version: "v1", mode: .normal)], "v2 does not start again")
        #expect(policy.ledger.quarantined == ["v2"])
        #expect(log.consecutiveFailed(before: "b3") == 2)
        #expect(log.boots[1].reachedGood == true, "kept after the failed verdict")
    }

    @Test("a good boot that ends uncleanly with one agent's candidate in probation is no evidence against another agent's known-good content")
    func lateCrashBlamesOnlyTheCandidate() {
        var log = BootLog()
        let both = BootRecord(id: "b1", startedAt: Date(timeIntervalSince1970: 0), state: "pending", agents: ["demo": candidate, "av": knownGood])
        _ = log.enter(both)
        _ = log.markStarted("demo", in: "b1")
        _ = log.markStarted("av", in: "b1")
        log.markGood("b1")
        _ = log.enter(BootRecord(id: "b2", startedAt: Date(timeIntervalSince1970: 0), state: "pending", agents: ["demo": candidate, "av": knownGood]))
        #expect(log.state(of: "b1") == "failed")
        #expect(log.failedBootsInARow(agent: "demo", running: candidate, before: "b2") == 1)
        #expect(log.failedBootsInARow(agent: "av", running: knownGood, before: "b2") == 0)
        #expect(!log.boots[0].countsAgainstContent(of: "av"))
    }

    @Test("a boot that fails before boot-good while another agent runs a candidate or a preflight counts against that, not against known-good content")
    func earlyCrashBlamesTheOtherAgentsTrial() {
        for other in [candidate, BootAgentRecord(active: "v1", candidate: nil, mode: .normal, preflight: "v3")] {
            var log = BootLog()
            _ = log.enter(BootRecord(id: "b1", startedAt: Date(timeIntervalSince1970: 0), state: "pending", agents: ["demo": other, "av": knownGood]))
            _ = log.markStarted("demo", in: "b1")
            _ = log.markStarted("av", in: "b1")
            _ = log.enter(BootRecord(id: "b2", startedAt: Date(timeIntervalSince1970: 0), state: "pending", agents: ["demo": other, "av": knownGood]))
            #expect(log.state(of: "b1") == "failed")
            #expect(log.boots[0].otherAgentOnTrial(than: "av") == "demo")
            #expect(log.failedBootsInARow(agent: "av", running: knownGood, before: "b2") == 0)
        }
        // Alone, the same boot counts against the known-good content.
        var log = BootLog()
        _ = log.enter(BootRecord(id: "b1", startedAt: Date(timeIntervalSince1970: 0), state: "pending", agents: ["av": knownGood]))
        _ = log.markStarted("av", in: "b1")
        _ = log.enter(BootRecord(id: "b2", startedAt: Date(timeIntervalSince1970: 0), state: "pending", agents: ["av": knownGood]))
        #expect(log.failedBootsInARow(agent: "av", running: knownGood, before: "b2") == 1)
    }

    @Test("a promotion keeps the agent's started mark: a boot that fails after it, before boot-good, counts against the promoted version")
    func promotionKeepsStartedMark() {
        var log = BootLog()
        var fresh = candidate
        fresh.started = false
        _ = log.enter(boot("b1", fresh))
        _ = log.markStarted("demo", in: "b1")
        // Probation passes before boot-good (probation_sec below boot_good_after_sec), or an operator promotes.
        let promoted = log.record("demo", BootAgentRecord(active: "v2", candidate: nil, mode: .normal, started: false), in: "b1")
        #expect(promoted)
        #expect(log.boots[0].agents?["demo"]?.started == true, "the same process still runs v2")
        let promotedRecord = BootAgentRecord(active: "v2", candidate: nil, mode: .normal)
        #expect(log.enter(boot("b2", promotedRecord))?.state == "failed")
        #expect(log.failedBootsInARow(agent: "demo", running: promotedRecord, before: "b2") == 1)
        // A new version is a new run: not started until the agent starts on it.
        _ = log.markStarted("demo", in: "b2")
        _ = log.record("demo", BootAgentRecord(active: "v3", candidate: "v3", mode: .normal, started: false), in: "b2")
        #expect(log.boots[1].agents?["demo"]?.started == false)
    }

    @Test("a boot that ends during a preflight counts against the version preflighted, never against what the agent runs")
    func preflightCrash() {
        var log = BootLog()
        _ = log.enter(boot("b1", knownGood))
        _ = log.markStarted("demo", in: "b1")
        log.markGood("b1")
        let marked = log.markPreflight("demo", version: "v3", in: "b1")
        let recorded = log.record("demo", knownGood, in: "b1")
        #expect(marked)
        #expect(!recorded, "recording what runs keeps the mark")
        #expect(log.boots[0].agents?["demo"]?.preflight == "v3")
        let verdict = log.enter(boot("b2", knownGood))
        #expect(verdict?.state == "failed", "a good boot that dies during a preflight failed")
        #expect(verdict?.explanation.contains("during a preflight of demo v3") == true)
        #expect(log.failedBootsInARow(agent: "demo", running: knownGood, before: "b2") == 0, "not against known-good v1")
        #expect(log.failedPreflightBootsInARow(agent: "demo", version: "v3", before: "b2") == 1)
        // Activated again: its preflight takes the machine down before boot-good.
        _ = log.markStarted("demo", in: "b2")
        _ = log.markPreflight("demo", version: "v3", in: "b2")
        _ = log.enter(boot("b3", knownGood))
        #expect(log.failedPreflightBootsInARow(agent: "demo", version: "v3", before: "b3") == 2)
        #expect(log.failedBootsInARow(agent: "demo", running: knownGood, before: "b3") == 0)
        // A preflight that ended, or one whose daemon was restarted (killing it), blames nothing.
        _ = log.markPreflight("demo", version: "v4", in: "b3")
        let ended = log.markPreflight("demo", version: nil, in: "b3")
        #expect(ended)
        _ = log.markPreflight("demo", version: "v4", in: "b3")
        let restart = log.enter(boot("b3", knownGood))
        #expect(restart == nil)
        #expect(log.boots[2].agents?["demo"]?.preflight == nil)
        log.markGood("b3")
        #expect(log.enter(boot("b4", knownGood))?.state == "good")
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
        let actions = policy.handle(.bootLoop(failedBoots: 2), at: moment(5))
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

    @Test("with boot_loop_stops_agent, boot loops on known-good content walk the ladder: older known-good, safe mode, give up; status says why")
    func knownGoodBootLoops() throws {
        var policy = AgentPolicy(
            settings: policySettings(safeModeExec: true, bootLoopStopsAgent: true), ledger: makeLedger(knownGood: ["v0", "v1"], active: "v1"))
        var actions = policy.handle(.bootLoop(failedBoots: 2), at: moment(1))
        #expect(actions.decision(.rollback)?.reason == "boot-loop-on-known-good")
        #expect(policy.ledger.active == "v0")

        // The same failed boots with v0: rolling back did not help, so the content stays and safe mode follows.
        policy = restarted(policy)
        actions = policy.handle(.bootLoop(failedBoots: 2), at: moment(1))
        #expect(actions.decision(.bootAssessed)?.reason == "rollback-did-not-help")
        #expect(actions.spawns == [.spawn(version: "v0", mode: .safeMode)])
        #expect(policy.degradedReason == "in safe mode: rolling back did not help, the agent fails the same way on known-good content; evidence: 2 failed boots in a row with the agent on content v0")

        policy = restarted(policy)
        actions = policy.handle(.bootLoop(failedBoots: 3), at: moment(1))
        #expect(actions.events.last == .gaveUp)
        #expect(actions.decision(.gaveUp)?.reason == "safe-mode-boot-loop")
        #expect(actions.spawns.isEmpty)
        #expect(policy.phase == .givenUp)

        // status and status --json say which step and on what evidence, also from the state file.
        policy = restarted(policy)
        let status = StatusReport.Agent(policy: policy, pid: nil, statusText: nil, at: moment(2))
        #expect(status.state == "given-up")
        #expect(status.degradedReason == "given up: the machine fails to boot with it in safe mode as well; evidence: 3 failed boots in a row with the agent on content v0 in safe mode")
        #expect(status.escalation?.step == "given-up")
        #expect(status.escalation?.reason == "safe-mode-boot-loop")
        #expect(status.escalation?.evidence == "3 failed boots in a row with the agent on content v0 in safe mode")
        #expect(status.escalation?.version == "v0")
        let json = String(decoding: try JSONEncoder.backstop.encode(status), as: UTF8.self)
        #expect(json.contains(#""escalation":{"at":"#), "\(json)")
        #expect(json.contains(#""step":"given-up""#))
        #expect(json.contains(#""boot_loop":null"#))
    }

    @Test("by default a boot loop with no candidate to roll back is reported and the agent keeps running on its known-good content")
    func knownGoodBootLoopIsReported() throws {
        var policy = AgentPolicy(settings: policySettings(safeModeExec: true), ledger: makeLedger(knownGood: ["v0", "v1"], active: "v1"))
        let actions = policy.handle(.bootLoop(failedBoots: 2), at: moment(1))
        #expect(actions.events == [.bootAssessed])
        let decision = try #require(actions.decision(.bootAssessed))
        #expect(decision.reason == "boot-loop")
        #expect(decision.failures == 2)
        #expect(decision.message.contains("boot loop: 2 failed boots, no candidate content to roll back"), "\(decision.message)")
        #expect(actions.spawns == [.spawn(version: "v1", mode: .normal)], "started as it is, on v1, not v0, not in safe mode")
        #expect(!actions.contains { if case .switchContent = $0 { true } else { false } })
        #expect(policy.ledger.active == "v1")
        #expect(policy.ledger.quarantined.isEmpty)
        policy.startAndBecomeReady(at: 2)
        #expect(policy.phase.isRunning)
        #expect(policy.degradedReason == "boot loop: 2 failed boots, no candidate content to roll back")

        // More failed boots: still running, the count follows; kept across a restart until reset-failed.
        policy = restarted(policy)
        _ = policy.handle(.bootLoop(failedBoots: 3), at: moment(1))
        #expect(policy.phase.isStarting)
        policy = restarted(policy)
        let status = StatusReport.Agent(policy: policy, pid: nil, statusText: nil, at: moment(2))
        #expect(status.degraded)
        #expect(status.degradedReason == "boot loop: 3 failed boots, no candidate content to roll back")
        #expect(status.bootLoop == StatusReport.BootLoop(failedBoots: 3, version: "v1", at: moment(1).wall))
        #expect(status.escalation == nil)
        _ = policy.handle(.begin(), at: moment(3))
        _ = policy.handle(.resetFailed, at: moment(4))
        #expect(policy.reportedBootLoop == nil)
        #expect(!policy.isDegraded)
    }

    @Test("a boot loop that began with the promotion of the active version rolls back to the known-good version before it; one that began later is only reported")
    func bootLoopSincePromotion() throws {
        // v0 promoted at 0 s, v1 at 1 s: failed boots since 0.5 s began with v1's promotion.
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v0", "v1"], active: "v1"))
        let actions = policy.handle(.bootLoop(failedBoots: 2, rowStartedAt: moment(0.5).wall), at: moment(5))
        #expect(actions.events == [.bootAssessed, .contentQuarantined, .rollback])
        #expect(actions.decision(.bootAssessed)?.message.contains("promoted in the first of those boots") == true)
        #expect(actions.decision(.rollback)?.reason == "boot-loop")
        #expect(actions.spawns == [.spawn(version: "v0", mode: .normal)], "v1 never runs again")
        #expect(policy.ledger.quarantined == ["v1"])
        #expect(policy.ledger.active == "v0")

        // Failed boots that began after v1 was promoted: unchanged content, reported only.
        var unchanged = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v0", "v1"], active: "v1"))
        let reported = unchanged.handle(.bootLoop(failedBoots: 2, rowStartedAt: moment(2).wall), at: moment(5))
        #expect(reported.events == [.bootAssessed])
        #expect(reported.spawns == [.spawn(version: "v1", mode: .normal)])
        #expect(unchanged.ledger.quarantined.isEmpty)
    }

    @Test("by default an agent in safe mode is not given up on boot evidence alone")
    func safeModeBootLoopIsReported() throws {
        var policy = AgentPolicy(settings: policySettings(safeModeExec: true), ledger: makeLedger(knownGood: ["v1"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        _ = policy.crashUntilCrashLoop(from: 0)
        #expect(policy.mode == .safeMode)
        policy = restarted(policy)
        let actions = policy.handle(.bootLoop(failedBoots: 2), at: moment(1))
        #expect(actions.spawns == [.spawn(version: "v1", mode: .safeMode)])
        #expect(!actions.events.contains(.gaveUp))
        #expect(policy.degradedReason?.hasPrefix("in safe mode: every known-good version crash-loops too; evidence: 3 failures within 120 s on content v1 (crashed SIGSEGV)") == true, "\(policy.degradedReason ?? "")")
    }

    @Test("a boot loop with a candidate still rolls it back whatever boot_loop_stops_agent says")
    func candidateBootLoopWithoutOptIn() {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v2"))
        let actions = policy.handle(.bootLoop(failedBoots: 2), at: moment(5))
        #expect(actions.events == [.bootAssessed, .contentQuarantined, .rollback])
        #expect(actions.spawns == [.spawn(version: "v1", mode: .normal)])
        #expect(policy.reportedBootLoop == nil)
    }

    @Test("boot_failure_threshold failed boots during preflights of a staged version quarantine it; what runs is not touched")
    func preflightBootLoop() throws {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v3"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        policy.startAndBecomeReady(at: 0)
        let actions = policy.preflightBootLoop("v3", failedBoots: 2, at: moment(5))
        #expect(actions.events == [.bootAssessed, .contentQuarantined])
        #expect(actions.decision(.contentQuarantined)?.reason == "boot-loop")
        #expect(actions.decision(.contentQuarantined)?.version == "v3")
        #expect(actions.spawns.isEmpty)
        #expect(policy.phase.isRunning)
        #expect(policy.ledger.active == "v1")
        #expect(policy.ledger.quarantined == ["v3"])
        #expect(policy.activationRefusal("v3") == .versionQuarantined("v3"))
        #expect(!policy.isDegraded, "the live agent never ran it")
    }

    @Test("a boot loop of the first version, with nothing known-good behind it, leaves nothing active and the agent stopped")
    func firstVersionBootLoop() {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(staged: ["v1"], active: "v1"))
        let actions = policy.handle(.bootLoop(failedBoots: 3), at: moment(1))
        #expect(actions.contains(.switchContent(version: nil)))
        #expect(actions.spawns.isEmpty)
        #expect(policy.phase == .givenUp)
        #expect(policy.ledger.quarantined == ["v1"])
    }
}

/// The policy as a new daemon process in a new boot restores it.
private func restarted(_ policy: AgentPolicy) -> AgentPolicy {
    var next = AgentPolicy(settings: policy.settings)
    next.restore(from: policy.stateFile(bootID: "old", at: moment(2)), currentBootID: "new")
    return next
}
