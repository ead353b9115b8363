import Foundation
import Testing
@testable import BackstopCore

/// The cells of the policy's phase × event table that the scenario tests do not reach:
/// events a phase ignores, and the stops, starts and spawn failures that cross each other.
@Suite("AgentPolicy: the phase × event table")
struct AgentPolicyTableTests {
    /// Known-good v1 active, the agent stopped (the daemon has not begun supervising).
    func stopped(_ settings: PolicySettings = policySettings()) -> AgentPolicy {
        AgentPolicy(settings: settings, ledger: makeLedger(knownGood: ["v1"], active: "v1"))
    }

    /// The policy has asked to spawn v1 at t = 0.
    func starting(_ settings: PolicySettings = policySettings()) -> AgentPolicy {
        var policy = stopped(settings)
        #expect(policy.handle(.begin(), at: moment(0)).spawns == [.spawn(version: "v1", mode: .normal)])
        return policy
    }

    /// v1 started at t = 0 and ready at t = 1.
    func running(_ settings: PolicySettings = policySettings()) -> AgentPolicy {
        var policy = starting(settings)
        policy.startAndBecomeReady(at: 0)
        #expect(policy.phase.isRunning)
        return policy
    }

    /// v1 crashed once at t = 0.5 and waits out its restart delay.
    func inBackoff() -> AgentPolicy {
        var policy = starting()
        policy.startAndCrash(at: 0)
        #expect(policy.phase == .backoff)
        return policy
    }

    /// An operator stopped the running agent at t = 5; its exit has not arrived.
    func operatorStopping() -> AgentPolicy {
        var policy = running()
        #expect(policy.handle(.stop, at: moment(5)) == [.disarm(.backoffReset), .terminate(signal: SIGTERM)])
        #expect(policy.phase == .stopping(.operatorStop))
        return policy
    }

    /// Given up in an earlier life of the daemon (restored from its state file).
    func givenUp() -> AgentPolicy {
        var state = AgentStateFile()
        state.ledger = makeLedger(knownGood: ["v1"], active: "v1")
        state.givenUp = true
        var policy = AgentPolicy(settings: policySettings())
        policy.restore(from: state, currentBootID: "b")
        #expect(policy.phase == .givenUp)
        return policy
    }

    /// Expects each of `events` to return no action and leave `policy` as it was.
    func expectIgnored(_ events: [AgentEvent], in policy: AgentPolicy, at seconds: Double, _ phase: String) {
        for event in events {
            var copy = policy
            #expect(copy.handle(event, at: moment(seconds)) == [], "\(event) in \(phase)")
            #expect(copy == policy, "\(event) in \(phase) changes nothing")
        }
    }

    @Test("each phase ignores the events that have no cell of their own in it, and is left as it was")
    func ignoredCells() {
        let exit = AgentEvent.agentExited(.signaled(signal: SIGSEGV))
        let ready = AgentEvent.probeFinished(.ready, result: .passed)
        let health = AgentEvent.probeFinished(.health, result: .failed("exit 1"))
        let dependency = AgentEvent.stoppedWithDependency("dep.service", termination: nil)
        let bootLoop = AgentEvent.bootLoop(failedBoots: 3)
        expectIgnored(
            [.agentStarted(pid: 7), .agentReady, ready, health, .heartbeat, dependency, .dependencyActive,
             .backgroundProcessesExited, exit, .spawnFailed("no such file")],
            in: stopped(), at: 1, "stopped")
        expectIgnored(
            [.begin(), health, .heartbeat, .dependencyActive, .backgroundProcessesExited, bootLoop],
            in: starting(), at: 0.5, "starting")
        expectIgnored(
            [.begin(), .agentStarted(pid: 7), .agentReady, ready, .dependencyActive, .backgroundProcessesExited, bootLoop, .start],
            in: running(), at: 2, "running")
        expectIgnored(
            [.begin(), .agentStarted(pid: 7), .agentReady, ready, health, .heartbeat, .dependencyActive,
             .backgroundProcessesExited, exit, bootLoop],
            in: inBackoff(), at: 0.55, "backoff")
        expectIgnored(
            [.begin(), .agentReady, ready, health, .heartbeat, dependency, .dependencyActive, bootLoop, .stop],
            in: operatorStopping(), at: 6, "stopping for an operator")
        expectIgnored(
            [.begin(), .agentStarted(pid: 7), .agentReady, ready, health, .heartbeat, dependency, .dependencyActive,
             .backgroundProcessesExited, exit, .spawnFailed("no such file"), bootLoop, .shutdown],
            in: givenUp(), at: 1, "given up")
    }

    @Test("a timer firing with a deadline it is no longer armed for is stale and ignored in any phase")
    func staleTimer() throws {
        var policy = starting()
        let actions = policy.handle(.agentStarted(pid: 7), at: moment(0))
        let deadline = try #require(actions.deadline(of: .startedAfter))
        let before = policy
        #expect(policy.handle(.timerFired(.startedAfter, deadline: deadline - 0.5), at: moment(deadline)) == [])
        #expect(policy == before)
        #expect(policy.handle(.timerFired(.restart, deadline: deadline), at: moment(deadline)) == [], "never armed")
        #expect(policy == before)
        #expect(policy.handle(.timerFired(.startedAfter, deadline: deadline), at: moment(deadline)).events == [.agentReady])
    }

    @Test("a probation that ends while a hung candidate is being stopped does not promote it")
    func probationWhileStopping() throws {
        var policy = try candidatePolicy(policySettings(probationSeconds: 60, watchdogSeconds: 5))
        let ready = policy.startAndBecomeReady(at: 0)
        let probation = try #require(ready.deadline(of: .probation))
        let watchdog = try #require(ready.deadline(of: .watchdog))
        #expect(watchdog < probation)
        let hung = policy.handle(.timerFired(.watchdog, deadline: watchdog), at: moment(watchdog))
        #expect(hung.events == [.agentHung] && hung.last == .terminate(signal: SIGABRT))
        #expect(policy.phase == .stopping(.failure(.hung)))
        #expect(policy.handle(.timerFired(.probation, deadline: probation), at: moment(probation)) == [])
        #expect(policy.ledger.candidate == "v2", "still a candidate")
        let exited = policy.handle(.agentExited(.signaled(signal: SIGABRT, coreDumped: false)), at: moment(probation + 1))
        #expect(exited.decision(.agentExited)?.reason == "hung")
        #expect(policy.phase == .backoff)
    }

    @Test("a process created after a stop was asked for is recorded as started and terminated")
    func startedWhileStopping() {
        var policy = starting()
        #expect(policy.handle(.stop, at: moment(0.1)) == [.terminate(signal: SIGTERM)])
        #expect(policy.phase == .stopping(.operatorStop))
        let actions = policy.handle(.agentStarted(pid: 7), at: moment(0.2))
        #expect(actions.events == [.agentStarted])
        #expect(actions.last == .terminate(signal: SIGTERM))
        #expect(actions.deadline(of: .startedAfter) == nil, "no readiness is awaited")
        #expect(policy.phase == .stopping(.operatorStop))
    }

    @Test("a spawn that fails while a restart was asked for starts the agent on the new version; one an operator stopped stays stopped")
    func spawnFailedWhileStopping() throws {
        var restarting = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        #expect(restarting.handle(.begin(), at: moment(0)).spawns == [.spawn(version: "v1", mode: .normal)])
        let activated = try restarting.activate("v2", at: moment(0.1))
        #expect(activated.last == .terminate(signal: SIGTERM))
        #expect(restarting.phase == .stopping(.restart))
        let respawn = restarting.handle(.spawnFailed("fork: resource temporarily unavailable"), at: moment(0.2))
        #expect(respawn.spawns == [.spawn(version: "v2", mode: .normal)])
        #expect(respawn.decisions.isEmpty, "no failure is counted for the run that never started")
        #expect(restarting.phase.isStarting && restarting.recentFailures(at: moment(0.2)).isEmpty)

        var stopping = starting()
        _ = stopping.handle(.stop, at: moment(0.1))
        #expect(stopping.handle(.spawnFailed("no such file"), at: moment(0.2)) == [])
        #expect(stopping.phase == .stopped && stopping.operatorStopped)
        #expect(stopping.recentFailures(at: moment(0.2)).isEmpty)
    }

    @Test("start while an operator's stop is under way restarts the agent once it has exited")
    func startWhileOperatorStopping() {
        var policy = operatorStopping()
        #expect(policy.handle(.start, at: moment(6)) == [])
        #expect(policy.phase == .stopping(.restart) && !policy.operatorStopped)
        let exited = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(7))
        #expect(exited.decision(.agentExited)?.reason == nil, "an exit Backstop asked for")
        #expect(exited.spawns == [.spawn(version: "v1", mode: .normal)])
    }

    @Test("stop while a restart is under way leaves the agent stopped once it has exited")
    func stopWhileRestarting() throws {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        policy.startAndBecomeReady(at: 0)
        _ = try policy.activate("v2", at: moment(5))
        #expect(policy.phase == .stopping(.restart))
        #expect(policy.handle(.stop, at: moment(5.1)) == [])
        #expect(policy.phase == .stopping(.operatorStop))
        let exited = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(6))
        #expect(exited.spawns.isEmpty && exited.events == [.agentExited])
        #expect(policy.phase == .stopped && policy.ledger.active == "v2")
    }

    @Test("shutdown in backoff cancels the restart and leaves the agent stopped, with no signal to send")
    func shutdownInBackoff() {
        var policy = inBackoff()
        #expect(policy.timers[.restart] != nil)
        #expect(policy.handle(.shutdown, at: moment(0.55)) == [.disarm(.restart)])
        #expect(policy.phase == .stopped && policy.timers.isEmpty)
    }

    @Test("what the host does besides recording is asked for: the boot log's start, the boot-health clock, garbage collection")
    func explicitHostActions() throws {
        var policy = AgentPolicy(settings: policySettings(probationSeconds: 60), ledger: makeLedger(knownGood: ["v1"], active: "v1"))
        let staged = policy.staged(record("v2"))
        #expect(staged.events == [.contentStaged] && staged.last == .collectGarbage)
        _ = try policy.activate("v2", at: moment(0))
        let started = policy.handle(.agentStarted(pid: 7), at: moment(0))
        #expect(Array(started.prefix(2)).events == [.agentStarted] && started[1] == .markStartedThisBoot)
        let deadline = try #require(started.deadline(of: .startedAfter))
        let ready = policy.handle(.timerFired(.startedAfter, deadline: deadline), at: moment(deadline))
        let readyAt = try #require(ready.firstIndex { if case .record(let d) = $0 { d.event == .agentReady } else { false } })
        #expect(ready[readyAt + 1] == .startBootHealthClock)
        #expect(ready.filter { $0 == .startBootHealthClock }.count == 1)
        let probation = try #require(ready.deadline(of: .probation))
        let promoted = policy.handle(.timerFired(.probation, deadline: probation), at: moment(probation))
        #expect(promoted.events == [.contentPromoted] && promoted.last == .collectGarbage)
        #expect(!promoted.contains(.markStartedThisBoot) && !promoted.contains(.startBootHealthClock))

        var failing = try candidatePolicy()
        let loop = failing.crashUntilCrashLoop(from: 0).actions
        let quarantined = try #require(loop.firstIndex { if case .record(let d) = $0 { d.event == .contentQuarantined } else { false } })
        #expect(loop[quarantined + 1] == .collectGarbage)
        #expect(loop.filter { $0 == .collectGarbage }.count == 1, "one collection for the one quarantine")
        #expect(loop.filter { $0 == .markStartedThisBoot }.count == loop.events.filter { $0 == .agentStarted }.count)
    }
}
