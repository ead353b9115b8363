import Foundation
import Testing
@testable import BackstopCore

/// Settings with small numbers that make deadlines easy to read.
func policySettings(
    threshold: Int = 3, windowSeconds: Double = 120, probationSeconds: Double = 600,
    restartDelayMilliseconds: Int = 100, restartDelayMaxSeconds: Double = 30,
    startTimeoutSeconds: Double = 90, watchdogSeconds: Double = 0, notify: Bool = false, safeModeExec: Bool = false,
    bootLoopStopsAgent: Bool = false
) -> PolicySettings {
    PolicySettings(
        agent: "demo", failureThreshold: threshold, failureWindowSeconds: windowSeconds,
        probationSeconds: probationSeconds, restartDelayMilliseconds: restartDelayMilliseconds,
        restartDelayMaxSeconds: restartDelayMaxSeconds, startTimeoutSeconds: startTimeoutSeconds,
        watchdogSeconds: watchdogSeconds, notify: notify, hasSafeModeExec: safeModeExec, bootLoopStopsAgent: bootLoopStopsAgent)
}

/// Known-good v1 behind candidate v2, which the operator has just activated at t = 0:
/// the policy has asked to spawn v2.
func candidatePolicy(_ settings: PolicySettings = policySettings()) throws -> AgentPolicy {
    var policy = AgentPolicy(settings: settings, ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
    let actions = try policy.activate("v2", at: moment(0))
    #expect(actions.spawns == [.spawn(version: "v2", mode: .normal)])
    #expect(policy.ledger.candidate == "v2")
    return policy
}

@Suite("AgentPolicy: failures, crash-loop threshold and window")
struct AgentPolicyThresholdTests {
    @Test("agent-started names the version the started process runs, also when a version was activated while it was being created")
    func startedNamesTheRunningVersion() throws {
        var policy = try candidatePolicy()
        _ = policy.startAndCrash(at: 1)
        #expect(policy.fireRestart().spawns == [.spawn(version: "v2", mode: .normal)])
        // v1 activated between the spawn of v2 and its pid being known.
        let activated = try policy.activate("v1", at: moment(2))
        #expect(activated.contains(.terminate(signal: SIGTERM)), "the run on v2 is replaced")
        let started = try #require(policy.handle(.agentStarted(pid: 4243), at: moment(2.1)).decision(.agentStarted))
        #expect(started.version == "v2" && started.message.contains("on content v2"), "\(started)")
        #expect(policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(2.2)).spawns == [.spawn(version: "v1", mode: .normal)])
        let next = try #require(policy.handle(.agentStarted(pid: 4244), at: moment(2.3)).decision(.agentStarted))
        #expect(next.version == "v1")
    }

    @Test("threshold - 1 failures restart the agent from backoff and keep the candidate")
    func belowThresholdRestarts() throws {
        var policy = try candidatePolicy()
        for failure in 1...2 {
            let start = Double(failure) * 10
            let actions = policy.startAndCrash(at: start)
            #expect(actions.events == [.agentStarted, .agentExited])
            let exit = try #require(actions.decision(.agentExited))
            #expect(exit.signal == SIGSEGV)
            #expect(exit.reason == "crashed")
            #expect(exit.failures == failure)
            #expect(policy.phase == .backoff)
            #expect(actions.deadline(of: .restart) != nil)
            #expect(policy.fireRestart().spawns == [.spawn(version: "v2", mode: .normal)])
            #expect(policy.phase.isStarting)
        }
        #expect(policy.recentFailures(at: moment(30)).count == 2)
        #expect(policy.ledger.candidate == "v2")
        #expect(policy.ledger.quarantined.isEmpty)
    }

    @Test("the threshold-th failure within the window is a crash loop")
    func thresholdIsCrashLoop() throws {
        var policy = try candidatePolicy()
        policy.startAndCrash(at: 10)
        policy.fireRestart()
        policy.startAndCrash(at: 20)
        policy.fireRestart()
        let actions = policy.startAndCrash(at: 30)
        let crashLoop = try #require(actions.decision(.crashLoop))
        #expect(crashLoop.failures == 3)
        #expect(crashLoop.version == "v2")
        #expect(actions.decision(.agentExited)?.failures == 3)
        #expect(policy.ledger.quarantined == ["v2"])
        #expect(policy.recentFailures(at: moment(31)).isEmpty, "the crash loop starts a new count")
    }

    @Test("failure_threshold = 1: the first failure is already a crash loop")
    func thresholdOne() throws {
        var policy = try candidatePolicy(policySettings(threshold: 1))
        let actions = policy.startAndCrash(at: 0)
        #expect(actions.events.contains(.crashLoop))
        #expect(policy.ledger.quarantined == ["v2"])
    }

    @Test("a non-zero exit code is a failure with its exit status")
    func nonZeroExitIsFailure() throws {
        var policy = try candidatePolicy()
        _ = policy.handle(.agentStarted(pid: 7), at: moment(0))
        let actions = policy.handle(.agentExited(.exited(code: 3)), at: moment(0.5))
        let exit = try #require(actions.decision(.agentExited))
        #expect(exit.exitStatus == 3)
        #expect(exit.reason == "exited")
        #expect(policy.escalationState.failures.map(\.reason) == [.exited])
        #expect(policy.escalationState.failures.first?.version == "v2")
    }

    @Test("a failure exactly failure_window_sec old has left the window")
    func failureAtWindowEdgeDropsOut() throws {
        var policy = try candidatePolicy()
        policy.startAndCrash(at: 0)  // fails at 0.5
        policy.fireRestart()
        policy.startAndCrash(at: 60)  // 60.5
        policy.fireRestart()
        let actions = policy.startAndCrash(at: 120)  // 120.5: the first is exactly 120 s old
        #expect(!actions.events.contains(.crashLoop))
        #expect(actions.decision(.agentExited)?.failures == 2)
        #expect(policy.phase == .backoff)
        #expect(policy.recentFailures(at: moment(120.5)).map(\.monotonicSeconds) == [60.5, 120.5])
    }

    @Test("a failure just inside the window still counts")
    func failureJustInsideWindowCounts() throws {
        var policy = try candidatePolicy()
        policy.startAndCrash(at: 0)  // 0.5
        policy.fireRestart()
        policy.startAndCrash(at: 60)  // 60.5
        policy.fireRestart()
        let actions = policy.startAndCrash(at: 119.9)  // 120.4: the first is 119.9 s old
        #expect(actions.events.contains(.crashLoop))
    }

    @Test("failures spaced wider than window / (threshold - 1) never crash-loop")
    func spacedFailuresNeverCrashLoop() throws {
        var policy = try candidatePolicy()
        var events: [EventKind] = []
        for index in 0..<20 {
            let start = Double(index) * 61
            events += policy.startAndBecomeReady(at: start).events
            events += policy.handle(.agentExited(.signaled(signal: SIGBUS)), at: moment(start + 30)).events
            #expect(policy.recentFailures(at: moment(start + 30)).count <= 2)
            #expect(policy.phase == .backoff)
            events += policy.fireRestart().events
        }
        #expect(!events.contains(.crashLoop))
        #expect(policy.ledger.candidate == "v2")
        #expect(policy.ledger.quarantined.isEmpty)
    }

    @Test("a clean exit (code 0) is restarted but never counted as a failure")
    func cleanExitIsNotAFailure() throws {
        var policy = try candidatePolicy()
        for index in 0..<5 {
            let start = Double(index) * 10
            policy.startAndBecomeReady(at: start)
            let actions = policy.handle(.agentExited(.exited(code: 0)), at: moment(start + 5))
            let exit = try #require(actions.decision(.agentExited))
            #expect(exit.reason == "clean-exit")
            #expect(exit.failures == nil)
            #expect(exit.exitStatus == 0)
            #expect(!actions.events.contains(.crashLoop))
            #expect(policy.phase == .backoff)
            #expect(policy.fireRestart().spawns == [.spawn(version: "v2", mode: .normal)])
        }
        #expect(policy.recentFailures(at: moment(50)).map(\.reason) == Array(repeating: .cleanExit, count: 5))
        #expect(policy.countedFailures(at: moment(50)).isEmpty)
        #expect(policy.ledger.candidate == "v2")
    }

    @Test("clean_exit = backoff (the default): clean exits in a row back off longer each time and show degraded")
    func cleanExitsBackOffByDefault() throws {
        var policy = try candidatePolicy(policySettings(restartDelayMilliseconds: 100, restartDelayMaxSeconds: 30))
        var delays: [Double] = []
        var now = 0.0
        for _ in 0..<4 {
            _ = policy.handle(.agentStarted(pid: 4242), at: moment(now))
            let actions = policy.handle(.agentExited(.exited(code: 0)), at: moment(now + 1))
            delays.append(((try #require(actions.deadline(of: .restart)) - (now + 1)) * 1000).rounded() / 1000)
            #expect(policy.degradedReason == "in backoff after clean-exit")
            #expect(policy.stateWord == "backoff")
            now = policy.timers[.restart]!
            policy.fireRestart()
        }
        #expect(delays == [0.1, 0.2, 0.4, 0.8])
    }

    @Test("clean_exit = normal: an agent that is ready and exits 0 every two seconds is started again after restart_delay_ms each time, never degraded, nothing counted")
    func cleanExitsAsNormalLife() throws {
        var policy = try candidatePolicy(PolicySettings(
            agent: "demo", restartDelayMilliseconds: 100, restartDelayMaxSeconds: 30, cleanExit: .normal))
        var now = 0.0
        for _ in 0..<20 {
            let started = policy.startAndBecomeReady(at: now)
            #expect(started.decision(.agentStarted) != nil)
            #expect(policy.degradedReason == nil)
            let actions = policy.handle(.agentExited(.exited(code: 0)), at: moment(now + 2))
            let exit = try #require(actions.decision(.agentExited))
            #expect(exit.reason == "clean-exit" && exit.failures == nil)
            let delay = try #require(actions.deadline(of: .restart)) - (now + 2)
            #expect(abs(delay - 0.1) < 1e-9, "the delay stays at restart_delay_ms, not \(delay)")
            #expect(policy.phase == .restarting)
            #expect(policy.stateWord == "starting")
            #expect(policy.degradedReason == nil, "a clean exit by design does not degrade the agent")
            now = policy.timers[.restart]!
            #expect(policy.fireRestart().spawns == [.spawn(version: "v2", mode: .normal)])
        }
        #expect(policy.escalationState.consecutiveFailures == 0)
        #expect(policy.recentFailures(at: moment(now)).isEmpty)
        #expect(policy.ledger.candidate == "v2")
        // A crash is still a failure, backed off from the first step: the clean exits added none.
        let crash = policy.startAndCrash(at: now)
        #expect(crash.decision(.agentExited)?.failures == 1)
        #expect(abs(try #require(crash.deadline(of: .restart)) - (now + 0.6)) < 1e-9)
        #expect(policy.degradedReason == "in backoff after crashed")
    }

    @Test("clean_exit = normal: an operator stop while the restart is due leaves the agent stopped")
    func stopWhileRestarting() throws {
        var policy = try candidatePolicy(PolicySettings(agent: "demo", cleanExit: .normal))
        policy.startAndBecomeReady(at: 0)
        _ = policy.handle(.agentExited(.exited(code: 0)), at: moment(2))
        #expect(policy.phase == .restarting)
        _ = policy.handle(.stop, at: moment(2.05))
        #expect(policy.phase == .stopped)
        #expect(policy.handle(.timerFired(.restart, deadline: 2.1), at: moment(2.1)).isEmpty)
        #expect(policy.phase == .stopped)
    }

    @Test("clean_exit = normal: a run that exits 0 before it was ready is not normal life: it backs off and shows degraded")
    func cleanExitBeforeReady() throws {
        var policy = try candidatePolicy(PolicySettings(
            agent: "demo", restartDelayMilliseconds: 100, restartDelayMaxSeconds: 30, cleanExit: .normal))
        _ = policy.handle(.agentStarted(pid: 4242), at: moment(0))
        let actions = policy.handle(.agentExited(.exited(code: 0)), at: moment(0.2))
        #expect(actions.decision(.agentExited)?.reason == "clean-exit")
        #expect(policy.phase == .backoff)
        #expect(policy.degradedReason == "in backoff after clean-exit")
        #expect(policy.escalationState.consecutiveFailures == 1)
    }

    @Test("a restart loop stays degraded while it starts again, until a run is ready")
    func restartLoopDegradedWhileStarting() throws {
        var policy = try candidatePolicy(PolicySettings(
            agent: "demo", restartDelayMilliseconds: 100, restartDelayMaxSeconds: 30, notify: true, cleanExit: .normal))
        #expect(!policy.isDegraded, "the first start after an activation")
        _ = policy.handle(.agentStarted(pid: 4242), at: moment(0))
        _ = policy.handle(.agentExited(.exited(code: 0)), at: moment(0.2))
        #expect(policy.fireRestart().spawns == [.spawn(version: "v2", mode: .normal)])
        _ = policy.handle(.agentStarted(pid: 4243), at: moment(0.4))
        #expect(policy.phase.isStarting)
        #expect(policy.degradedReason == "restarting after 1 failure in a row (last: clean-exit), not ready since")
        _ = policy.handle(.agentReady, at: moment(1))
        #expect(!policy.isDegraded, "ready again")
    }
}

@Suite("AgentPolicy: restart backoff")
struct AgentPolicyBackoffTests {
    @Test("restart delays double from restart_delay_ms up to restart_delay_max_sec")
    func delayFormula() {
        let settings = policySettings(restartDelayMilliseconds: 100, restartDelayMaxSeconds: 2)
        let delays = (1...8).map { AgentPolicy.restartDelaySeconds(consecutiveFailures: $0, settings: settings) }
        #expect(delays == [0.1, 0.2, 0.4, 0.8, 1.6, 2, 2, 2])
        #expect(AgentPolicy.restartDelaySeconds(consecutiveFailures: 0, settings: settings) == 0.1)
        #expect(AgentPolicy.restartDelaySeconds(consecutiveFailures: 10_000, settings: settings) == 2)
    }

    @Test("with the SPEC defaults the delay reaches the 30 s cap after 10 failures")
    func defaultDelays() {
        let settings = PolicySettings(agent: "demo")
        #expect(AgentPolicy.restartDelaySeconds(consecutiveFailures: 9, settings: settings) == 25.6)
        #expect(AgentPolicy.restartDelaySeconds(consecutiveFailures: 10, settings: settings) == 30)
    }

    @Test("each failure arms the restart timer one doubled delay after the exit")
    func armedRestartDeadlines() throws {
        var policy = try candidatePolicy(policySettings(
            threshold: 100, windowSeconds: 10_000, restartDelayMilliseconds: 100, restartDelayMaxSeconds: 2))
        let expectedDelays = [0.1, 0.2, 0.4, 0.8, 1.6, 2, 2]
        for (index, delay) in expectedDelays.enumerated() {
            let exit = Double(index) * 10 + 0.5
            let actions = policy.startAndCrash(at: exit - 0.5)
            #expect(actions.deadline(of: .restart) == exit + delay, "failure \(index + 1)")
            #expect(policy.timers[.restart] == exit + delay)
            policy.fireRestart()
        }
    }

    @Test("a healthy run of restart_delay_max_sec resets the backoff (.backoffReset timer)")
    func backoffResetsAfterHealthyRun() throws {
        var policy = try candidatePolicy(policySettings(
            threshold: 100, windowSeconds: 10_000, restartDelayMilliseconds: 100, restartDelayMaxSeconds: 30))
        for index in 0..<3 {
            policy.startAndCrash(at: Double(index) * 10)
            policy.fireRestart()
        }
        #expect(policy.escalationState.consecutiveFailures == 3)
        let ready = policy.startAndBecomeReady(at: 100)  // ready at 101
        let resetDeadline = try #require(ready.deadline(of: .backoffReset))
        #expect(resetDeadline == 101 + 30)
        #expect(policy.handle(.timerFired(.backoffReset, deadline: resetDeadline), at: moment(resetDeadline)).isEmpty)
        #expect(policy.escalationState.consecutiveFailures == 0)
        let crash = policy.handle(.agentExited(.signaled(signal: SIGSEGV)), at: moment(200))
        #expect(crash.deadline(of: .restart) == 200 + 0.1)
    }

    @Test("a run shorter than restart_delay_max_sec keeps the backoff growing")
    func shortRunKeepsBackoff() throws {
        var policy = try candidatePolicy(policySettings(
            threshold: 100, windowSeconds: 10_000, restartDelayMilliseconds: 100, restartDelayMaxSeconds: 30))
        for index in 0..<3 {
            policy.startAndCrash(at: Double(index) * 10)
            policy.fireRestart()
        }
        let ready = policy.startAndBecomeReady(at: 100)  // ready at 101
        let resetDeadline = try #require(ready.deadline(of: .backoffReset))
        let crash = policy.handle(.agentExited(.signaled(signal: SIGSEGV)), at: moment(120))
        #expect(crash.contains(.disarm(.backoffReset)))
        #expect(crash.deadline(of: .restart) == 120 + 0.8)
        // The disarmed reset deadline passing later changes nothing.
        #expect(policy.handle(.timerFired(.backoffReset, deadline: resetDeadline), at: moment(resetDeadline)).isEmpty)
        #expect(policy.escalationState.consecutiveFailures == 4)
    }
}

@Suite("AgentPolicy: timers, readiness, watchdog")
struct AgentPolicyTimerTests {
    @Test("a timer firing with a deadline other than the armed one is ignored")
    func staleRestartTimerIgnored() throws {
        var policy = try candidatePolicy()
        let actions = policy.startAndCrash(at: 0)
        let deadline = try #require(actions.deadline(of: .restart))
        #expect(policy.handle(.timerFired(.restart, deadline: deadline - 0.05), at: moment(deadline)).isEmpty)
        #expect(policy.phase == .backoff)
        #expect(policy.handle(.timerFired(.restart, deadline: deadline), at: moment(deadline)).spawns
            == [.spawn(version: "v2", mode: .normal)])
        // Fired once: the same deadline again is stale too.
        #expect(policy.handle(.timerFired(.restart, deadline: deadline), at: moment(deadline + 1)).isEmpty)
        #expect(policy.phase.isStarting)
    }

    @Test("a timer that was never armed is ignored")
    func unarmedTimerIgnored() throws {
        var policy = try candidatePolicy()
        policy.startAndBecomeReady(at: 0)
        for timer in [PolicyTimer.startTimeout, .watchdog, .restart] {
            #expect(policy.handle(.timerFired(timer, deadline: 5), at: moment(5)).isEmpty)
        }
        #expect(policy.phase.isRunning)
    }

    @Test("without notify the agent is ready one second after it started; READY=1 is ignored")
    func startedAfterWithoutNotify() throws {
        var policy = try candidatePolicy()
        let started = policy.handle(.agentStarted(pid: 1), at: moment(10))
        #expect(started.deadline(of: .startedAfter) == 11)
        #expect(started.deadline(of: .startTimeout) == nil)
        #expect(policy.handle(.agentReady, at: moment(10.5)).isEmpty)
        #expect(policy.phase.isStarting)
        let ready = policy.handle(.timerFired(.startedAfter, deadline: 11), at: moment(11))
        #expect(ready.events == [.agentReady])
        #expect(policy.phase.isRunning)
    }

    @Test("watchdog: heartbeats push the deadline; a missed one aborts the agent and counts as hung")
    func watchdogMissedHeartbeat() throws {
        var policy = try candidatePolicy(policySettings(watchdogSeconds: 10, notify: true))
        let started = policy.handle(.agentStarted(pid: 9), at: moment(0))
        #expect(started.deadline(of: .startTimeout) == 90)
        let ready = policy.handle(.agentReady, at: moment(1))
        #expect(ready.contains(.disarm(.startTimeout)))
        #expect(ready.deadline(of: .watchdog) == 11)
        #expect(policy.handle(.heartbeat, at: moment(5)) == [.arm(.watchdog, atMonotonicSeconds: 15)])

        #expect(policy.handle(.timerFired(.watchdog, deadline: 11), at: moment(11)).isEmpty, "re-armed since")
        #expect(policy.phase.isRunning)

        let hung = policy.handle(.timerFired(.watchdog, deadline: 15), at: moment(15))
        #expect(hung.events == [.agentHung])
        #expect(hung.decision(.agentHung)?.reason == "hung")
        #expect(hung.contains(.terminate(signal: SIGABRT)))
        #expect(policy.phase == .stopping(.failure(.hung)))

        let exit = policy.handle(.agentExited(.signaled(signal: SIGABRT)), at: moment(15.2))
        let decision = try #require(exit.decision(.agentExited))
        #expect(decision.reason == "hung")
        #expect(decision.signal == SIGABRT)
        #expect(decision.failures == 1)
        #expect(policy.escalationState.failures.map(\.reason) == [.hung])
        #expect(policy.phase == .backoff)
    }

    @Test("heartbeats are ignored when watchdog_sec = 0")
    func heartbeatWithoutWatchdog() throws {
        var policy = try candidatePolicy(policySettings(notify: true))
        _ = policy.handle(.agentStarted(pid: 9), at: moment(0))
        let ready = policy.handle(.agentReady, at: moment(1))
        #expect(ready.deadline(of: .watchdog) == nil)
        #expect(policy.handle(.heartbeat, at: moment(5)).isEmpty)
    }

    @Test("start timeout: no READY=1 within start_timeout_sec aborts the agent and counts as start-timeout")
    func startTimeout() throws {
        var policy = try candidatePolicy(policySettings(startTimeoutSeconds: 90, notify: true))
        let started = policy.handle(.agentStarted(pid: 9), at: moment(0))
        let deadline = try #require(started.deadline(of: .startTimeout))
        #expect(deadline == 90)
        let timedOut = policy.handle(.timerFired(.startTimeout, deadline: deadline), at: moment(90))
        #expect(timedOut.events.isEmpty, "a start that times out is not a hang: no agent-hung")
        #expect(timedOut.contains(.terminate(signal: SIGABRT)))
        #expect(policy.phase == .stopping(.failure(.startTimeout)))

        let exit = policy.handle(.agentExited(.signaled(signal: SIGABRT)), at: moment(90.1))
        let exited = try #require(exit.decision(.agentExited))
        #expect(exited.reason == "start-timeout")
        #expect(exited.message.contains("did not become ready within 90 s"), "\(exited.message)")
        #expect(policy.escalationState.failures.map(\.reason) == [.startTimeout])
        #expect(policy.phase == .backoff)
    }

    @Test("READY=1 in time disarms the start timeout; its old deadline is then stale")
    func readyBeforeStartTimeout() throws {
        var policy = try candidatePolicy(policySettings(notify: true))
        let started = policy.handle(.agentStarted(pid: 9), at: moment(0))
        let deadline = try #require(started.deadline(of: .startTimeout))
        #expect(policy.handle(.agentReady, at: moment(3)).contains(.disarm(.startTimeout)))
        #expect(policy.handle(.timerFired(.startTimeout, deadline: deadline), at: moment(deadline)).isEmpty)
        #expect(policy.phase.isRunning)
        #expect(policy.escalationState.failures.isEmpty)
    }

    @Test("spawn failure (exec failed) counts as a failure")
    func spawnFailed() throws {
        var policy = try candidatePolicy()
        let actions = policy.handle(.spawnFailed("No such file or directory"), at: moment(0))
        #expect(actions.decision(.agentExited)?.reason == "exec-failed")
        #expect(policy.escalationState.failures.map(\.reason) == [.execFailed])
        #expect(policy.phase == .backoff)
    }

    @Test("activating while running stops the agent as asked and starts the new version")
    func activationRestartsOnNewVersion() throws {
        var policy = AgentPolicy(
            settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        #expect(policy.handle(.begin(), at: moment(0)) == [.spawn(version: "v1", mode: .normal)])
        policy.startAndBecomeReady(at: 0)
        let actions = try policy.activate("v2", at: moment(50))
        #expect(actions.first == .switchContent(version: "v2"))
        #expect(actions.decision(.contentActivated)?.previousVersion == "v1")
        #expect(actions.last == .terminate(signal: SIGTERM))
        #expect(actions.spawns.isEmpty)
        #expect(policy.phase == .stopping(.restart))
        let exit = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(50.2))
        #expect(exit.decision(.agentExited)?.reason == nil)
        #expect(exit.spawns == [.spawn(version: "v2", mode: .normal)])
        #expect(policy.escalationState.failures.isEmpty)
    }

    @Test("activating an unknown version throws noSuchVersion")
    func activateUnknown() {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], active: "v1"))
        #expect(throws: PolicyError.noSuchVersion("v9")) { try policy.activate("v9", at: moment(0)) }
        #expect(policy.ledger.active == "v1")
    }
}

@Suite("AgentPolicy: the agent's unit stopped by systemd with a unit it requires")
struct AgentPolicyDependencyStopTests {
    @Test("not a failure and not an operator's stop: the agent waits, degraded, and starts when the unit is active again")
    func waitsForTheDependency() throws {
        var policy = try candidatePolicy()
        policy.startAndBecomeReady(at: 0)
        let actions = policy.handle(.stoppedWithDependency("clamav-daemon.socket", termination: .signaled(signal: SIGTERM)), at: moment(10))
        let exit = try #require(actions.decision(.agentExited))
        #expect(exit.reason == nil && exit.failures == nil)
        #expect(exit.message.contains("clamav-daemon.socket"))
        #expect(actions.spawns.isEmpty && actions.deadline(of: .restart) == nil)
        #expect(policy.phase == .awaitingDependency("clamav-daemon.socket"))
        #expect(!policy.operatorStopped)
        #expect(policy.escalationState.failures.isEmpty)
        #expect(policy.stateWord == "stopped")
        #expect(policy.degradedReason?.contains("waiting for clamav-daemon.socket") == true)
        // The exit systemd's stop causes changes nothing more.
        #expect(policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(10.1)).isEmpty)
        #expect(policy.handle(.dependencyActive, at: moment(20)).spawns == [.spawn(version: "v2", mode: .normal)])
        #expect(policy.phase.isStarting)
        #expect(policy.handle(.dependencyActive, at: moment(20.1)).isEmpty, "only a waiting agent is started")
    }

    @Test("an activation or a rollback while it waits starts the agent at once")
    func activationStartsTheWaitingAgent() throws {
        var policy = try candidatePolicy()
        policy.startAndBecomeReady(at: 0)
        _ = policy.handle(.stoppedWithDependency("clamav-daemon.socket", termination: nil), at: moment(10))
        #expect(try policy.rollback(to: nil, at: moment(11)).spawns == [.spawn(version: "v1", mode: .normal)])
        policy.startAndBecomeReady(at: 12)
        _ = policy.handle(.stoppedWithDependency("clamav-daemon.socket", termination: nil), at: moment(20))
        #expect(try policy.activate("v2", at: moment(21)).spawns == [.spawn(version: "v2", mode: .normal)])
    }

    @Test("from backoff it waits too; an operator's stop then holds and start lifts it")
    func fromBackoffAndOperatorStop() throws {
        var policy = try candidatePolicy()
        _ = policy.startAndCrash(at: 0)
        #expect(policy.phase == .backoff)
        let actions = policy.handle(.stoppedWithDependency("dep.service", termination: nil), at: moment(0.55))
        #expect(actions.contains(.disarm(.restart)))
        #expect(policy.phase == .awaitingDependency("dep.service"))
        _ = policy.handle(.stop, at: moment(1))
        #expect(policy.phase == .stopped && policy.operatorStopped)
        #expect(policy.handle(.dependencyActive, at: moment(2)).isEmpty)
        #expect(policy.handle(.start, at: moment(3)).spawns == [.spawn(version: "v2", mode: .normal)])
    }
}
