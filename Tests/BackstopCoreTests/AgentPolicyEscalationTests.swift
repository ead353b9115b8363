import Foundation
import Testing
@testable import BackstopCore

@Suite("AgentPolicy: escalation ladder")
struct AgentPolicyEscalationTests {
    @Test("a crash loop on a candidate quarantines it and rolls back to the last known-good")
    func candidateCrashLoopRollsBack() throws {
        var policy = try candidatePolicy()
        let (actions, end) = policy.crashUntilCrashLoop(from: 0)
        #expect(actions.events.suffix(4) == [.agentExited, .crashLoop, .contentQuarantined, .rollback])
        #expect(actions.decision(.contentQuarantined)?.version == "v2")
        #expect(actions.decision(.contentQuarantined)?.reason == "crash-loop")
        let rollback = try #require(actions.decision(.rollback))
        #expect(rollback.version == "v1")
        #expect(rollback.previousVersion == "v2")
        #expect(rollback.reason == "crash-loop")
        // The content is switched before the agent is started on it.
        let switchIndex = try #require(actions.lastIndex(of: .switchContent(version: "v1")))
        let spawnIndex = try #require(actions.lastIndex(of: .spawn(version: "v1", mode: .normal)))
        #expect(switchIndex < spawnIndex)
        #expect(spawnIndex == actions.count - 1)

        #expect(policy.phase.isStarting)
        #expect(policy.ledger.active == "v1")
        #expect(policy.ledger.quarantined == ["v2"])
        #expect(policy.ledger.record("v2")?.quarantineReason == "crash-loop")
        #expect(policy.lastRollback?.from == "v2")
        #expect(policy.lastRollback?.to == "v1")
        #expect(policy.lastRollback?.reason == .crashLoop)
        #expect(policy.escalationState.failures.isEmpty)
        #expect(policy.escalationState.consecutiveFailures == 0)
        #expect(policy.isDegraded)

        #expect(throws: PolicyError.versionQuarantined("v2")) { try policy.activate("v2", at: moment(end)) }
        #expect(policy.ledger.active == "v1")
    }

    @Test("the full ladder with safe_mode_exec: rollback, older known-good, safe mode, give up")
    func fullLadderWithSafeMode() throws {
        var policy = AgentPolicy(
            settings: policySettings(safeModeExec: true),
            ledger: makeLedger(knownGood: ["v0", "v1"], staged: ["v2"], active: "v1"))
        _ = try policy.activate("v2", at: moment(0))

        // Step 1: the candidate crash-loops: quarantine and roll back to v1.
        var (actions, now) = policy.crashUntilCrashLoop(from: 0)
        #expect(actions.decision(.rollback)?.version == "v1")
        #expect(actions.spawns.last == .spawn(version: "v1", mode: .normal))

        // Step 2: the known-good crash-loops too, another way: the older known-good v0.
        (actions, now) = policy.crashUntilCrashLoop(from: now, signal: SIGABRT)
        let older = try #require(actions.decision(.rollback))
        #expect(older.version == "v0")
        #expect(older.previousVersion == "v1")
        #expect(older.reason == "crash-loop-on-known-good")
        #expect(actions.spawns.last == .spawn(version: "v0", mode: .normal))
        #expect(policy.ledger.quarantined == ["v2"], "known-good versions are not quarantined")

        // Step 3: every known-good crash-loops: safe mode, started with safe_mode_exec.
        (actions, now) = policy.crashUntilCrashLoop(from: now, signal: SIGBUS)
        #expect(actions.events.suffix(2) == [.crashLoop, .safeMode])
        #expect(actions.last == .spawn(version: "v0", mode: .safeMode))
        #expect(policy.mode == .safeMode)
        #expect(policy.isDegraded)

        // Step 4: it crash-loops in safe mode as well: give up, nothing is started.
        (actions, now) = policy.crashUntilCrashLoop(from: now)
        #expect(actions.events.suffix(2) == [.crashLoop, .gaveUp])
        #expect(actions.spawns.allSatisfy { $0 == .spawn(version: "v0", mode: .safeMode) })
        #expect(actions.after(.crashLoop).spawns.isEmpty)
        #expect(policy.phase == .givenUp)
        #expect(policy.isDegraded)
        #expect(policy.handle(.begin(), at: moment(now)).isEmpty, "a given-up agent waits for an operator")
    }

    @Test("without safe_mode_exec the ladder ends in a safe-mode decision and then gives up")
    func ladderWithoutSafeMode() throws {
        var policy = try candidatePolicy(policySettings(safeModeExec: false))
        var (actions, now) = policy.crashUntilCrashLoop(from: 0)
        #expect(actions.decision(.rollback)?.version == "v1")

        (actions, now) = policy.crashUntilCrashLoop(from: now)
        #expect(actions.events.suffix(3) == [.crashLoop, .safeMode, .gaveUp])
        #expect(actions.decision(.safeMode)?.version == "v1")
        #expect(actions.after(.crashLoop).spawns.isEmpty)
        #expect(policy.phase == .givenUp)
        #expect(policy.mode == .normal)
        #expect(policy.ledger.active == "v1")
        #expect(policy.ledger.quarantined == ["v2"])
    }

    @Test("the first version crash-looping, with no known-good to compare it with, is reported and retried, never quarantined",
          arguments: [false, true])
    func firstVersionCrashLoop(safeModeExec: Bool) throws {
        var policy = AgentPolicy(
            settings: policySettings(safeModeExec: safeModeExec), ledger: makeLedger(staged: ["v1"]))
        #expect(policy.handle(.begin(), at: moment(0)).isEmpty, "nothing to run before the first activation")
        #expect(policy.phase == .stopped)
        _ = try policy.activate("v1", at: moment(0))
        #expect(policy.ledger.candidate == "v1")

        let (actions, _) = policy.crashUntilCrashLoop(from: 0)
        #expect(actions.decision(.crashLoop)?.reason == "no-comparison")
        #expect(!actions.events.contains(.contentQuarantined) && !actions.events.contains(.rollback))
        #expect(!actions.events.contains(.safeMode) && !actions.events.contains(.gaveUp))
        #expect(policy.phase.isStarting, "restarted after its backoff")
        #expect(policy.mode == .normal)
        #expect(policy.ledger.candidate == "v1")
        #expect(policy.ledger.quarantined.isEmpty)
    }

    @Test("reset-failed starts a given-up agent again on its active version, in normal mode")
    func resetFailedRestartsGivenUp() throws {
        var policy = AgentPolicy(
            settings: policySettings(safeModeExec: true),
            ledger: makeLedger(knownGood: ["v1"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        var (_, now) = policy.crashUntilCrashLoop(from: 0)  // known-good crash loop: safe mode
        #expect(policy.mode == .safeMode)
        (_, now) = policy.crashUntilCrashLoop(from: now)  // crash loop in safe mode: give up
        #expect(policy.phase == .givenUp)

        let actions = policy.handle(.resetFailed, at: moment(now + 10))
        #expect(actions == [.spawn(version: "v1", mode: .normal)])
        #expect(policy.phase.isStarting)
        #expect(policy.mode == .normal)
        #expect(policy.escalationState.failures.isEmpty)
        #expect(policy.escalationState.escalationTried.isEmpty)
        policy.startAndBecomeReady(at: now + 10)
        #expect(!policy.isDegraded)
    }

    @Test("reset-failed also takes a running agent out of safe mode")
    func resetFailedLeavesSafeMode() throws {
        var policy = AgentPolicy(
            settings: policySettings(safeModeExec: true),
            ledger: makeLedger(knownGood: ["v1"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        let (_, now) = policy.crashUntilCrashLoop(from: 0)
        policy.startAndBecomeReady(at: now)
        #expect(policy.mode == .safeMode)
        #expect(policy.isDegraded)

        let actions = policy.handle(.resetFailed, at: moment(now + 10))
        #expect(actions.last == .terminate(signal: SIGTERM))
        #expect(policy.phase == .stopping(.restart))
        let exit = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(now + 11))
        #expect(exit.spawns == [.spawn(version: "v1", mode: .normal)])
    }

    @Test("an agent is degraded after a rollback until an operator runs reset-failed")
    func degradedUntilResetFailed() throws {
        var policy = try candidatePolicy()
        policy.startAndBecomeReady(at: 0)
        #expect(!policy.isDegraded, "a healthy candidate is not degraded")
        _ = policy.handle(.agentExited(.signaled(signal: SIGSEGV)), at: moment(10))
        #expect(policy.isDegraded, "backoff is degraded")
        policy.fireRestart()

        let (_, now) = policy.crashUntilCrashLoop(from: 20)
        policy.startAndBecomeReady(at: now)
        #expect(policy.phase.isRunning)
        #expect(policy.mode == .normal)
        #expect(policy.ledger.active == "v1")
        #expect(policy.isDegraded, "rolled back since the last reset-failed")

        #expect(policy.handle(.resetFailed, at: moment(now + 100)).isEmpty, "a running agent is left running")
        #expect(!policy.isDegraded)
        #expect(policy.phase.isRunning)
        #expect(policy.ledger.quarantined == ["v2"], "reset-failed keeps the quarantine")
    }

    @Test("an operator rollback goes to the known-good version and leaves the candidate staged")
    func operatorRollback() throws {
        var policy = try candidatePolicy()
        policy.startAndBecomeReady(at: 0)
        let actions = try policy.rollback(to: nil, at: moment(20))
        #expect(actions.first == .switchContent(version: "v1"))
        #expect(actions.decision(.rollback)?.reason == "operator")
        #expect(policy.ledger.record("v2")?.standing == .staged)
        #expect(policy.ledger.quarantined.isEmpty)
        #expect(policy.phase == .stopping(.restart))
    }

    @Test("an operator rollback to a quarantined version is refused")
    func rollbackToQuarantined() throws {
        var policy = try candidatePolicy()
        let (_, now) = policy.crashUntilCrashLoop(from: 0)
        #expect(throws: PolicyError.versionQuarantined("v2")) { try policy.rollback(to: "v2", at: moment(now)) }
        #expect(throws: PolicyError.noSuchVersion("v9")) { try policy.rollback(to: "v9", at: moment(now)) }
    }

    @Test("a corrupt active candidate is quarantined and rolled back to known-good")
    func activeContentCorrupt() throws {
        var policy = try candidatePolicy()
        let actions = policy.handle(.activeContentCorrupt("file a.txt changed"), at: moment(5))
        #expect(actions.events == [.contentQuarantined, .rollback])
        #expect(actions.contains(.switchContent(version: "v1")))
        #expect(policy.ledger.active == "v1")
        #expect(policy.ledger.quarantined == ["v2"])
    }
}
