import Foundation
import Testing
@testable import BackstopCore

@Suite("AgentPolicy: probation")
struct AgentPolicyProbationTests {
    @Test("probation expiry while running promotes the candidate to known-good")
    func probationPromotes() throws {
        var policy = try candidatePolicy(policySettings(probationSeconds: 600))
        let ready = policy.startAndBecomeReady(at: 0)  // ready at 1
        let deadline = try #require(ready.deadline(of: .probation))
        #expect(deadline == 601)
        #expect(policy.probationElapsedSeconds(at: moment(301)) == 300)

        let promoted = policy.handle(.timerFired(.probation, deadline: deadline), at: moment(deadline))
        #expect(promoted.events == [.contentPromoted])
        #expect(promoted.decision(.contentPromoted)?.version == "v2")
        #expect(policy.ledger.candidate == nil)
        #expect(policy.ledger.knownGood == "v2")
        #expect(policy.ledger.knownGoodNewestFirst == ["v2", "v1"])
        #expect(policy.ledger.record("v2")?.promotedAt == moment(601).wall)
        #expect(policy.phase.isRunning)
    }

    @Test("a failed preflight quarantines a staged version without touching what runs; other standings are left alone")
    func preflightFailedQuarantines() throws {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        _ = policy.startAndBecomeReady(at: 0)
        let actions = policy.preflightFailed("v2", reason: .crashed, detail: "signal SIGSEGV", control: .passed(version: "v1"), at: moment(5))
        #expect(actions.events == [.preflightFailed, .contentQuarantined])
        #expect(actions.decision(.preflightFailed)?.reason == "crashed")
        #expect(actions.decision(.preflightFailed)?.previousVersion == "v1", "the control is named")
        #expect(policy.lastPreflightFailure?.verdict == .quarantined)
        #expect(actions.decision(.contentQuarantined)?.reason == "preflight-failed")
        #expect(policy.ledger.record("v2")?.standing == .quarantined)
        #expect(policy.ledger.active == "v1" && policy.phase.isRunning)
        #expect(!actions.contains { if case .spawn = $0 { true } else if case .terminate = $0 { true } else { false } })
        #expect(policy.preflightFailed("v1", reason: .crashed, detail: "", control: .passed(version: "v1"), at: moment(6)).isEmpty, "a known-good version is never quarantined by a preflight")
        #expect(policy.ledger.record("v1")?.standing == .knownGood)
    }

    @Test("a known-good version runs without probation")
    func noProbationForKnownGood() throws {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        let ready = policy.startAndBecomeReady(at: 0)
        #expect(ready.deadline(of: .probation) == nil)
    }

    @Test("probation expiring when the agent is no longer running promotes nothing")
    func probationOnlyWhileRunning() throws {
        var policy = try candidatePolicy(policySettings(probationSeconds: 600, watchdogSeconds: 10, notify: true))
        let ready = policy.startAndBecomeReady(at: 0)  // ready at 1
        let probation = try #require(ready.deadline(of: .probation))
        let watchdog = try #require(ready.deadline(of: .watchdog))
        // The agent hangs; before its exit is reaped the probation deadline passes.
        _ = policy.handle(.timerFired(.watchdog, deadline: watchdog), at: moment(watchdog))
        #expect(policy.phase == .stopping(.failure(.hung)))
        #expect(policy.handle(.timerFired(.probation, deadline: probation), at: moment(probation)).isEmpty)
        #expect(policy.ledger.candidate == "v2")
        #expect(policy.ledger.knownGood == "v1")
    }

    @Test("a failure during probation resets the banked probation time")
    func failureResetsProbation() throws {
        var policy = try candidatePolicy(policySettings(probationSeconds: 600))
        policy.startAndBecomeReady(at: 0)  // ready at 1
        #expect(policy.probationElapsedSeconds(at: moment(301)) == 300)
        let crash = policy.handle(.agentExited(.signaled(signal: SIGSEGV)), at: moment(301))
        #expect(crash.contains(.disarm(.probation)))
        #expect(policy.probationBankedSeconds == 0)
        #expect(policy.probationElapsedSeconds(at: moment(400)) == 0)

        policy.fireRestart()
        let ready = policy.startAndBecomeReady(at: 310)  // ready at 311
        #expect(ready.deadline(of: .probation) == 311.0 + 600, "the full probation again, not the 300 s left")
    }

    @Test("probation banked before a daemon shutdown continues after begin")
    func probationBankedAcrossShutdown() throws {
        var policy = try candidatePolicy(policySettings(probationSeconds: 600))
        policy.startAndBecomeReady(at: 0)  // ready at 1
        let stop = policy.handle(.shutdown, at: moment(201))
        #expect(stop.contains(.disarm(.probation)))
        #expect(stop.last == .terminate(signal: SIGTERM))
        #expect(policy.phase == .stopping(.shutdown))
        #expect(policy.probationBankedSeconds == 200)

        let exit = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(201.5))
        #expect(exit.decision(.agentExited)?.reason == nil, "a stop Backstop asked for is not a failure")
        #expect(exit.spawns.isEmpty)
        #expect(policy.phase == .stopped)
        #expect(policy.escalationState.failures.isEmpty)

        #expect(policy.handle(.begin(), at: moment(500)) == [.spawn(version: "v2", mode: .normal)])
        let ready = policy.startAndBecomeReady(at: 500)  // ready at 501
        let deadline = try #require(ready.deadline(of: .probation))
        #expect(deadline == 501 + 400)
        #expect(policy.probationElapsedSeconds(at: moment(deadline)) == 600)
        #expect(policy.handle(.timerFired(.probation, deadline: deadline), at: moment(deadline)).events == [.contentPromoted])
        #expect(policy.ledger.knownGood == "v2")
    }

    @Test("probation banked in a restored state (new daemon process, same boot) continues")
    func probationBankedAcrossRestore() throws {
        var before = try candidatePolicy(policySettings(probationSeconds: 600))
        before.startAndBecomeReady(at: 0)  // ready at 1
        let saved = before.stateFile(bootID: "boot-a", at: moment(451))  // killed at 451: 450 s banked

        var after = AgentPolicy(settings: before.settings)
        after.restore(from: saved, currentBootID: "boot-a")
        #expect(after.handle(.begin(), at: moment(1000)) == [.spawn(version: "v2", mode: .normal)])
        let ready = after.startAndBecomeReady(at: 1000)  // ready at 1001
        #expect(ready.deadline(of: .probation) == 1001.0 + 150)
    }

    @Test("a backoff running at shutdown is waited out after begin")
    func beginWaitsOutBackoff() throws {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], active: "v1"))
        #expect(policy.handle(.begin(restartDueMonotonicSeconds: 50), at: moment(40)) == [.arm(.restart, atMonotonicSeconds: 50)])
        #expect(policy.phase == .backoff)
        #expect(policy.handle(.timerFired(.restart, deadline: 50), at: moment(50)) == [.spawn(version: "v1", mode: .normal)])
    }

    @Test("an operator promote ends probation early")
    func operatorPromote() throws {
        var policy = try candidatePolicy()
        policy.startAndBecomeReady(at: 0)
        let actions = try policy.promote("v2", at: moment(10))
        #expect(actions.contains(.disarm(.probation)))
        #expect(actions.decision(.contentPromoted)?.reason == "operator")
        #expect(policy.ledger.knownGood == "v2")
        #expect(policy.timers[.probation] == nil)
    }
}
