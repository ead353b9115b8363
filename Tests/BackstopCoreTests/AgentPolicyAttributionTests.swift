import Foundation
import Testing
@testable import BackstopCore

@Suite("Failure reasons and the attribution table")
struct FailureAttributionTests {
    @Test("each way a process ends gets its reason", arguments: [
        (Termination.exited(code: 0), false, false, FailureReason.cleanExit),
        (.exited(code: 0), false, true, .daemonized),
        (.exited(code: 3), false, true, .exited),
        (.signaled(signal: SIGSEGV, coreDumped: true), false, false, .crashed),
        (.signaled(signal: SIGABRT), false, false, .crashed),
        (.signaled(signal: SIGTERM), false, false, .killedExternally),
        (.signaled(signal: SIGKILL), false, false, .killedExternally),
        (.signaled(signal: SIGKILL), true, false, .oomKilled),
    ])
    func classify(termination: Termination, oomKilled: Bool, survivors: Bool, expected: FailureReason) {
        #expect(FailureReason.classify(termination, oomKilled: oomKilled, survivorsRemain: survivors) == expected)
    }

    /// README.md's table is what operators read; it must say what the code does.
    @Test("README's attribution table matches the code, row for row")
    func readmeTableMatchesCode() throws {
        let readme = try String(contentsOfFile: #filePath.components(separatedBy: "/Tests/")[0] + "/README.md", encoding: .utf8)
        var rows: [String: String] = [:]
        for line in readme.split(separator: "\n") where line.hasPrefix("| `") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 2 else { continue }
            rows[cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`"))] = cells[1]
        }
        for reason in FailureReason.allCases {
            let attribution = reason.attribution(cleanExitIsFailure: false)
            let expected = switch attribution {
            case .content: "counts against the content"
            case .restartOnly: "restart only"
            case .configuration: "configuration error"
            }
            #expect(rows[reason.rawValue]?.hasPrefix(expected) == true, "README row for \(reason.rawValue): \(rows[reason.rawValue] ?? "missing")")
        }
        #expect(FailureReason.cleanExit.attribution(cleanExitIsFailure: true) == .content)
    }

    @Test("reasons that are not the content's fault restart with backoff and never crash-loop",
          arguments: [(Termination.signaled(signal: SIGTERM), FailureReason.killedExternally),
                      (.signaled(signal: SIGKILL), .killedExternally), (.exited(code: 0), .cleanExit)])
    func notContentNeverCrashLoops(termination: Termination, reason: FailureReason) throws {
        var policy = try candidatePolicy()
        var now = 0.0
        for _ in 0..<10 {
            policy.startAndBecomeReady(at: now)
            let actions = policy.handle(.agentExited(termination), at: moment(now + 2))
            #expect(actions.decision(.agentExited)?.reason == reason.rawValue)
            #expect(actions.decision(.agentExited)?.failures == nil, "not counted")
            #expect(!actions.events.contains(.crashLoop))
            #expect(policy.phase == .backoff)
            now = policy.timers[.restart]!
            policy.fireRestart()
        }
        #expect(policy.ledger.candidate == "v2")
        #expect(policy.ledger.quarantined.isEmpty)
        #expect(policy.recentFailures(at: moment(now)).count == 10)
        #expect(policy.countedFailures(at: moment(now)).isEmpty)
    }

    @Test("success_exit_status: exit 143 and SIGTERM from outside are clean exits, never counted; other exits still are")
    func successExitStatus() throws {
        var settings = policySettings()
        settings.successExitStatus = SuccessExitStatus(codes: [143], signals: [SIGTERM])
        var policy = try candidatePolicy(settings)
        var now = 0.0
        for termination in [Termination.exited(code: 143), .signaled(signal: SIGTERM), .exited(code: 143)] {
            policy.startAndBecomeReady(at: now)
            let actions = policy.handle(.agentExited(termination), at: moment(now + 2))
            #expect(actions.decision(.agentExited)?.reason == FailureReason.cleanExit.rawValue, "\(termination)")
            #expect(actions.decision(.agentExited)?.failures == nil, "not counted")
            now = policy.timers[.restart]!
            policy.fireRestart()
        }
        #expect(policy.ledger.quarantined.isEmpty && policy.countedFailures(at: moment(now)).isEmpty)
        policy.startAndBecomeReady(at: now)
        #expect(policy.handle(.agentExited(.exited(code: 1)), at: moment(now + 2)).decision(.agentExited)?.failures == 1, "exit 1 still counts")
        #expect(FailureReason.classify(.exited(code: 143), oomKilled: false, survivorsRemain: false) == .exited, "without the setting")
        let withKill = SuccessExitStatus(signals: [SIGKILL])
        #expect(FailureReason.classify(.signaled(signal: SIGKILL), oomKilled: true, survivorsRemain: false, successExitStatus: withKill) == .oomKilled,
                "an OOM kill is never a clean exit")
    }

    @Test("check-config warns when success_exit_status lists a signal that a crash or the OOM killer sends")
    func successExitStatusCrashSignals() throws {
        func warnings(_ list: String) throws -> [String] {
            try Configuration.parse("[[agent]]\nname = \"a\"\nexec = [\"/bin/true\"]\nsuccess_exit_status = \(list)\n", path: "/x.toml").warnings
        }
        let warned = try warnings(#"[143, "SIGTERM", "SIGSEGV", "SIGKILL"]"#)
        #expect(warned.contains { $0.contains("success_exit_status lists SIGKILL, SIGSEGV") }, "\(warned)")
        #expect(try warnings(#"[143, "SIGTERM"]"#).allSatisfy { !$0.contains("success_exit_status") })
    }

    @Test("clean_exit_is_failure = true: clean exits crash-loop the candidate")
    func cleanExitAsFailure() throws {
        var settings = policySettings()
        settings.cleanExitIsFailure = true
        var policy = try candidatePolicy(settings)
        var events: [EventKind] = []
        var now = 0.0
        for _ in 0..<3 {
            policy.startAndBecomeReady(at: now)
            events += policy.handle(.agentExited(.exited(code: 0)), at: moment(now + 2)).events
            guard policy.phase == .backoff else { break }
            now = policy.timers[.restart]!
            policy.fireRestart()
        }
        #expect(events.contains(.crashLoop))
        #expect(policy.ledger.quarantined == ["v2"])
    }

    @Test("oom-killed counts against the content and says it is memory trouble")
    func oomKilledCounts() throws {
        var policy = try candidatePolicy(policySettings(threshold: 1))
        policy.startAndBecomeReady(at: 0)
        let actions = policy.handle(.agentExited(.signaled(signal: SIGKILL), oomKill: .machine), at: moment(5))
        let exit = try #require(actions.decision(.agentExited))
        #expect(exit.reason == "oom-killed")
        #expect(exit.failures == 1)
        #expect(exit.message.contains("ran out of memory"))
        #expect(actions.events.contains(.crashLoop))
        #expect(policy.ledger.active == "v1")
    }

    @Test("memory-limit: an OOM kill in the agent's own cgroup names memory_max and counts against a candidate, whose known-good version ran within the limit")
    func memoryLimitCountsAgainstACandidate() throws {
        var policy = try candidatePolicy(policySettings(threshold: 1))
        policy.startAndBecomeReady(at: 0)
        let actions = policy.handle(.agentExited(.signaled(signal: SIGKILL), oomKill: .memoryMax(bytes: 64 << 20)), at: moment(5))
        let exit = try #require(actions.decision(.agentExited))
        #expect(exit.reason == "memory-limit")
        #expect(exit.failures == 1)
        #expect(exit.message.contains("memory_max 64M"), "\(exit.message)")
        #expect(exit.message.contains("known-good v1 ran within it"), "\(exit.message)")
        #expect(actions.events.contains(.crashLoop))
        #expect(policy.ledger.active == "v1")
    }

    @Test("memory-limit on known-good content, or on a first version, restarts the agent and never blames the content")
    func memoryLimitWithoutComparisonIsNotCounted() throws {
        for ledger in [makeLedger(knownGood: ["v1"], active: "v1"), makeLedger(staged: ["v1"], active: "v1")] {
            var policy = AgentPolicy(settings: policySettings(threshold: 1), ledger: ledger)
            var now = 0.0
            _ = policy.handle(.begin(restartDueMonotonicSeconds: nil), at: moment(now))
            for _ in 0..<5 {
                policy.startAndBecomeReady(at: now)
                let actions = policy.handle(.agentExited(.signaled(signal: SIGKILL), oomKill: .memoryMax(bytes: 64 << 20)), at: moment(now + 2))
                let exit = try #require(actions.decision(.agentExited))
                #expect(exit.reason == "memory-limit")
                #expect(exit.failures == nil, "not counted")
                #expect(exit.message.contains("memory_max 64M") && exit.message.contains("not counted against the content"), "\(exit.message)")
                #expect(!actions.events.contains(.crashLoop) && !actions.events.contains(.contentQuarantined))
                #expect(policy.phase == .backoff)
                now = policy.timers[.restart]!
                policy.fireRestart()
            }
            #expect(policy.ledger.quarantined.isEmpty)
            #expect(policy.phase.isStarting, "still started again, never given up")
        }
    }

    @Test("memory_max as RLIMIT_DATA only: a failure that counts says the limit may be why; one that does not count says nothing of it")
    func rlimitOnlyFailuresNameTheLimit() throws {
        var policy = try candidatePolicy(policySettings(threshold: 3))
        policy.startAndBecomeReady(at: 0)
        let crashed = try #require(policy.handle(.agentExited(.exited(code: 1), memoryRlimitBytes: 64 << 20), at: moment(5)).decision(.agentExited))
        #expect(crashed.reason == "exited")
        #expect(crashed.message.contains("memory_max 64M holds this agent only as RLIMIT_DATA"), "\(crashed.message)")
        policy.fireRestart()
        policy.startAndBecomeReady(at: 10)
        let killed = try #require(policy.handle(.agentExited(.signaled(signal: SIGTERM), memoryRlimitBytes: 64 << 20), at: moment(15)).decision(.agentExited))
        #expect(killed.reason == "killed-externally")
        #expect(!killed.message.contains("memory_max"))
    }

    @Test("exec-failed never rolls back and keeps retrying with backoff")
    func execFailedNeverRollsBack() throws {
        var policy = try candidatePolicy(policySettings(threshold: 1))
        for _ in 0..<5 {
            let actions = policy.handle(.spawnFailed("/opt/agent: no such executable"), at: moment(1))
            #expect(actions.decision(.agentExited)?.reason == "exec-failed")
            #expect(actions.decision(.agentExited)?.message.contains("does not blame the content") == true)
            #expect(!actions.events.contains(.rollback))
            #expect(policy.phase == .backoff)
            policy.fireRestart()
        }
        #expect(policy.ledger.active == "v2")
    }

    @Test("exec-failed counts against the content when the program is part of the content")
    func execFailedOfContentProgram() throws {
        var settings = policySettings(threshold: 2)
        settings.programIsContent = true
        var policy = try candidatePolicy(settings)
        _ = policy.handle(.spawnFailed("/var/lib/backstop/demo/versions/v2/run: not executable (mode 644)"), at: moment(0))
        policy.fireRestart()
        let second = policy.handle(.spawnFailed("/var/lib/backstop/demo/versions/v2/run: not executable (mode 644)"), at: moment(1))
        #expect(second.decision(.agentExited)?.failures == 2)
        #expect(second.decision(.agentExited)?.message.contains("part of content v2") == true)
        #expect(second.events.contains(.rollback))
        #expect(policy.ledger.active == "v1")
        #expect(policy.ledger.quarantined == ["v2"])
    }

    @Test("failures that do not count are kept to the most recent 20; counted ones are all kept")
    func uncountedFailuresAreCapped() throws {
        var policy = try candidatePolicy(policySettings(threshold: 5, windowSeconds: 100_000))
        var now = 0.0
        for index in 0..<60 {
            policy.startAndBecomeReady(at: now)
            _ = policy.handle(.agentExited(index % 30 == 29 ? .signaled(signal: SIGSEGV) : .exited(code: 0)), at: moment(now + 2))
            now = policy.timers[.restart]!
            policy.fireRestart()
        }
        let kept = policy.recentFailures(at: moment(now))
        #expect(kept.filter { $0.reason == .cleanExit }.count == AgentPolicy.uncountedFailuresKept)
        #expect(kept.filter { $0.reason == .crashed }.count == 2)
        #expect(kept.last?.reason == .crashed)
    }

    @Test("a daemonized agent is not started again, nor rolled back, until its background processes are gone")
    func daemonizedWaitsForItsProcesses() throws {
        var policy = try candidatePolicy(policySettings(threshold: 1))
        _ = policy.handle(.agentStarted(pid: 10), at: moment(0))
        let actions = policy.handle(.agentExited(.exited(code: 0), survivors: [11, 12]), at: moment(0.2))
        let exit = try #require(actions.decision(.agentExited))
        #expect(exit.reason == "daemonized")
        #expect(exit.message.contains("Foreground yes"))
        #expect(exit.message.contains("pid 11, 12"))
        #expect(actions.spawns.isEmpty, "a second instance would run beside the first")
        #expect(policy.timers[.restart] == nil)
        #expect(!actions.events.contains(.crashLoop))
        #expect(policy.phase == .daemonized)
        #expect(policy.stateWord == "backoff")
        #expect(policy.degradedReason?.contains("daemonized") == true)

        let gone = policy.handle(.backgroundProcessesExited, at: moment(30))
        #expect(gone == [.arm(.restart, atMonotonicSeconds: 30.1)])
        #expect(policy.fireRestart().spawns == [.spawn(version: "v2", mode: .normal)])
        #expect(policy.ledger.candidate == "v2")
    }

    @Test("an activation while a daemonized agent runs stops its processes first, then starts the new version")
    func activationStopsDaemonizedProcesses() throws {
        var policy = try candidatePolicy()
        _ = policy.staged(record("v3"))
        _ = policy.handle(.agentStarted(pid: 10), at: moment(0))
        _ = policy.handle(.agentExited(.exited(code: 0), survivors: [11]), at: moment(0.2))
        let actions = try policy.activate("v3", at: moment(5))
        #expect(actions.contains(.terminate(signal: SIGTERM)))
        #expect(actions.spawns.isEmpty)
        #expect(policy.handle(.backgroundProcessesExited, at: moment(6)) == [.spawn(version: "v3", mode: .normal)])
    }
}

@Suite("AgentPolicy: readiness and health probes")
struct AgentPolicyProbeTests {
    func probeSettings(readyCheck: Bool = true, healthInterval: Double? = nil, notify: Bool = false) -> PolicySettings {
        var settings = policySettings(probationSeconds: 60, startTimeoutSeconds: 30, notify: notify)
        settings.hasReadyCheck = readyCheck
        settings.healthCheckIntervalSeconds = healthInterval
        settings.healthCheckTimeoutSeconds = 5
        settings.healthCheckFailures = 2
        return settings
    }

    @Test("with ready_check_exec the agent is starting until a check passes; failed checks are retried with growing pauses")
    func readyOnlyAfterCheckPasses() throws {
        var policy = try candidatePolicy(probeSettings())
        let started = policy.handle(.agentStarted(pid: 10), at: moment(0))
        #expect(started.deadline(of: .startTimeout) == 30)
        #expect(started.deadline(of: .startedAfter) == nil, "alive for a second is not ready")
        #expect(policy.handle(.timerFired(.readyCheck, deadline: 0), at: moment(0)) == [.probe(.ready, timeoutSeconds: 5)])

        var pauses: [Double] = []
        var now = 0.0
        for _ in 0..<6 {
            now += 0.05
            let retry = policy.handle(.probeFinished(.ready, result: .failed("exit code 1")), at: moment(now))
            let next = try #require(retry.deadline(of: .readyCheck))
            pauses.append(next - now)
            #expect(policy.phase.isStarting)
            #expect(policy.handle(.timerFired(.readyCheck, deadline: next), at: moment(next)) == [.probe(.ready, timeoutSeconds: 5)])
            now = next
        }
        #expect(pauses.map { ($0 * 100).rounded() / 100 } == [0.1, 0.2, 0.4, 0.8, 1.6, 2])
        let ready = policy.handle(.probeFinished(.ready, result: .passed), at: moment(now + 0.1))
        #expect(ready.events == [.agentReady])
        #expect(policy.phase.isRunning)
        #expect(ready.contains(.disarm(.startTimeout)))
    }

    @Test("with notify and ready_check_exec both READY=1 and a passing check are needed")
    func notifyAndReadyCheck() throws {
        var policy = try candidatePolicy(probeSettings(notify: true))
        _ = policy.handle(.agentStarted(pid: 10), at: moment(0))
        #expect(policy.handle(.agentReady, at: moment(1)).isEmpty)
        #expect(policy.phase.isStarting)
        #expect(policy.handle(.probeFinished(.ready, result: .passed), at: moment(2)).events == [.agentReady])
    }

    @Test("a candidate whose agent never becomes ready is not promoted: start timeouts crash-loop it")
    func neverReadyNeverPromoted() throws {
        var policy = try candidatePolicy(probeSettings())
        var events: [EventKind] = []
        var now = 0.0
        for _ in 0..<3 {
            events += policy.handle(.agentStarted(pid: 10), at: moment(now)).events
            let timeout = policy.timers[.startTimeout]!
            // Past the probation length, but never ready.
            events += policy.handle(.timerFired(.startTimeout, deadline: timeout), at: moment(timeout)).events
            events += policy.handle(.agentExited(.signaled(signal: SIGABRT)), at: moment(timeout + 1)).events
            guard policy.phase == .backoff else { break }
            now = policy.timers[.restart]!
            policy.fireRestart()
        }
        #expect(!events.contains(.contentPromoted))
        #expect(events.contains(.crashLoop))
        #expect(policy.ledger.quarantined == ["v2"])
        #expect(policy.ledger.record("v2")?.standing == .quarantined)
    }

    @Test("health checks: health_check_failures failures in a row make one health-check failure; a pass resets the count")
    func healthCheckFailures() throws {
        var policy = try candidatePolicy(probeSettings(readyCheck: false, healthInterval: 10))
        let ready = policy.startAndBecomeReady(at: 0)
        var next = try #require(ready.deadline(of: .healthCheck))
        #expect(next == 11)
        func check(_ passed: Bool) -> [PolicyAction] {
            #expect(policy.handle(.timerFired(.healthCheck, deadline: next), at: moment(next)) == [.probe(.health, timeoutSeconds: 5)])
            let actions = policy.handle(.probeFinished(.health, result: passed ? .passed : .failed("timed out after 5 s and was killed")), at: moment(next + 1))
            next = actions.deadline(of: .healthCheck) ?? next
            return actions
        }
        #expect(check(false).events.isEmpty)
        #expect(check(true).events.isEmpty)
        #expect(check(false).events.isEmpty, "the pass reset the count")
        let failed = check(false)
        let hung = try #require(failed.decision(.agentHung))
        #expect(hung.reason == "health-check")
        #expect(hung.message.contains("timed out after 5 s"))
        #expect(failed.contains(.terminate(signal: SIGTERM)))
        let exit = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(next + 2))
        #expect(exit.decision(.agentExited)?.reason == "health-check")
        #expect(exit.decision(.agentExited)?.failures == 1)
    }

    @Test("probation does not end while the last health check failed")
    func probationWaitsForHealthyCheck() throws {
        var policy = try candidatePolicy(probeSettings(readyCheck: false, healthInterval: 50))
        let ready = policy.startAndBecomeReady(at: 0)
        let probation = try #require(ready.deadline(of: .probation))
        _ = policy.handle(.timerFired(.healthCheck, deadline: 51), at: moment(51))
        _ = policy.handle(.probeFinished(.health, result: .failed("exit code 1")), at: moment(52))
        let deferred = policy.handle(.timerFired(.probation, deadline: probation), at: moment(probation))
        #expect(deferred.events.isEmpty)
        #expect(policy.ledger.candidate == "v2")
        _ = policy.handle(.timerFired(.healthCheck, deadline: 102), at: moment(102))
        _ = policy.handle(.probeFinished(.health, result: .passed), at: moment(103))
        let later = try #require(deferred.deadline(of: .probation))
        #expect(policy.handle(.timerFired(.probation, deadline: later), at: moment(later)).events == [.contentPromoted])
    }

    @Test("a ready check that cannot run stops the agent as exec-failed, a configuration error even when the program is content")
    func readyCheckCannotRun() throws {
        var settings = probeSettings()
        settings.programIsContent = true
        settings.failureThreshold = 1
        var policy = try candidatePolicy(settings)
        _ = policy.handle(.agentStarted(pid: 10), at: moment(0))
        let stop = policy.handle(.probeFinished(.ready, result: .couldNotRun("/opt/check: no such file")), at: moment(0.1))
        #expect(stop.contains(.terminate(signal: SIGTERM)))
        #expect(stop.deadline(of: .startTimeout) == nil)
        let exit = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(0.2))
        #expect(exit.decision(.agentExited)?.reason == "exec-failed")
        #expect(exit.decision(.agentExited)?.failures == nil, "not counted")
        #expect(!exit.events.contains(.crashLoop))
        #expect(policy.phase == .backoff)
        #expect(policy.countedFailures(at: moment(1)).isEmpty)
        #expect(policy.recentFailures(at: moment(1)).first?.attribution == .configuration)
    }

    @Test("a reason the runner knows (systemd's start timeout) wins over the signal that ended the agent")
    func knownReason() throws {
        var policy = try candidatePolicy(probeSettings(readyCheck: false))
        _ = policy.handle(.agentStarted(pid: 10), at: moment(0))
        let exit = policy.handle(.agentExited(.signaled(signal: SIGTERM), reason: .startTimeout), at: moment(5))
        #expect(exit.decision(.agentExited)?.reason == "start-timeout")
        #expect(exit.decision(.agentExited)?.failures == 1, "counted against the content, unlike killed-externally")
    }

    @Test("a health check that cannot run is not counted")
    func healthCheckCannotRun() throws {
        var policy = try candidatePolicy(probeSettings(readyCheck: false, healthInterval: 10))
        policy.startAndBecomeReady(at: 0)
        for check in 0..<5 {
            let at = 11 + Double(check) * 10
            let next = policy.handle(.probeFinished(.health, result: .couldNotRun("/opt/check: no such file")), at: moment(at))
            #expect(next == [.arm(.healthCheck, atMonotonicSeconds: at + 10)])
        }
        #expect(policy.phase.isRunning)
        #expect(policy.phase == .running(ReadyRun(healthCheckFailuresInARow: 0)))
    }

    @Test("results of probes of an earlier run are ignored")
    func staleProbeResults() throws {
        var policy = try candidatePolicy(probeSettings())
        _ = policy.handle(.agentStarted(pid: 10), at: moment(0))
        _ = policy.handle(.agentExited(.signaled(signal: SIGSEGV)), at: moment(1))
        #expect(policy.handle(.probeFinished(.ready, result: .passed), at: moment(1.5)).isEmpty)
        #expect(policy.phase == .backoff)
    }
}

@Suite("AgentPolicy: rollback that did not help, operator stop and start")
struct AgentPolicyOperatorTests {
    @Test("the same failure after a rollback stops version switching: no older known-good, safe mode, then give up")
    func rollbackDidNotHelp() throws {
        var policy = AgentPolicy(
            settings: policySettings(safeModeExec: true),
            ledger: makeLedger(knownGood: ["v0", "v1"], staged: ["v2"], active: "v1"))
        _ = try policy.activate("v2", at: moment(0))
        var (actions, now) = policy.crashUntilCrashLoop(from: 0)
        #expect(actions.decision(.rollback)?.version == "v1")
        #expect(policy.lastRollback?.failure == "crashed SIGSEGV")

        (actions, now) = policy.crashUntilCrashLoop(from: now)
        #expect(actions.decision(.rollback) == nil, "no ping-pong to v0")
        #expect(actions.decision(.crashLoop)?.reason == "rollback-did-not-help")
        #expect(actions.decision(.safeMode)?.reason == "rollback-did-not-help")
        #expect(actions.last == .spawn(version: "v1", mode: .safeMode))
        #expect(policy.escalationState.rollbackDidNotHelp)
        #expect(policy.degradedReason == "in safe mode: rolling back did not help, the agent fails the same way on known-good content; evidence: 3 failures within 120 s on content v1 (crashed SIGSEGV)")
        #expect(policy.currentEscalation?.reason == .rollbackDidNotHelp)
        #expect(policy.ledger.active == "v1")

        (actions, now) = policy.crashUntilCrashLoop(from: now)
        #expect(actions.events.suffix(2) == [.crashLoop, .gaveUp])
        #expect(policy.phase == .givenUp)

        // Kept across a daemon restart; cleared by reset-failed.
        var restored = AgentPolicy(settings: policy.settings)
        restored.restore(from: policy.stateFile(bootID: "b", at: moment(now)), currentBootID: "other")
        #expect(restored.degradedReason == "given up: it crash-loops in safe mode as well; evidence: 3 failures within 120 s on content v1 in safe mode (crashed SIGSEGV)")
        #expect(restored.currentEscalation?.step == .givenUp)
        #expect(restored.currentEscalation?.reason == .safeModeCrashLoops)
        _ = restored.handle(.resetFailed, at: moment(now))
        #expect(!restored.escalationState.rollbackDidNotHelp)
        #expect(restored.currentEscalation == nil)
        #expect(restored.degradedReason == nil)
    }

    @Test("stop during backoff: the pending restart is dropped and the agent stays stopped until start")
    func stopDuringBackoff() throws {
        var policy = try candidatePolicy()
        policy.startAndCrash(at: 0)
        let restart = try #require(policy.timers[.restart])
        let stop = policy.handle(.stop, at: moment(0.55))
        #expect(stop == [.disarm(.restart)])
        #expect(policy.phase == .stopped)
        #expect(policy.handle(.timerFired(.restart, deadline: restart), at: moment(restart)).isEmpty)
        #expect(!policy.isDegraded, "an operator stop is intended")
        #expect(policy.handle(.begin(), at: moment(1)).isEmpty, "a daemon restart keeps it stopped")

        var restored = AgentPolicy(settings: policy.settings)
        restored.restore(from: policy.stateFile(bootID: "b", at: moment(1)), currentBootID: "c")
        #expect(restored.handle(.begin(), at: moment(1)).isEmpty, "so does a reboot")
        #expect(restored.handle(.start, at: moment(2)) == [.spawn(version: "v2", mode: .normal)])
    }

    @Test("stop while running terminates the agent; its exit is expected and leaves it stopped")
    func stopWhileRunning() throws {
        var policy = try candidatePolicy()
        policy.startAndBecomeReady(at: 0)
        #expect(policy.handle(.stop, at: moment(5)).contains(.terminate(signal: SIGTERM)))
        #expect(policy.stateWord == "stopped")
        let exit = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(6))
        #expect(exit.decision(.agentExited)?.reason == nil)
        #expect(exit.spawns.isEmpty)
        #expect(policy.phase == .stopped)
        #expect(policy.recentFailures(at: moment(6)).isEmpty)
    }

    @Test("the same bytes staged twice: once one copy is quarantined, the other cannot be activated until it is released")
    func quarantinedTwinIsRefused() throws {
        var ledger = makeLedger(knownGood: ["v1"], active: "v1")
        for id in ["s1", "s2"] { ledger.add(VersionRecord(id: id, digest: "same-bytes", fileCount: 1, totalBytes: 1, stagedAt: moment(0).wall)) }
        ledger.quarantine("s1", reason: "crash-loop", at: moment(1).wall)
        var policy = AgentPolicy(settings: policySettings(), ledger: ledger)
        #expect(throws: PolicyError.identicalToQuarantined("s2", "s1")) { try policy.activate("s2", at: moment(2)) }
        #expect(PolicyError.identicalToQuarantined("s2", "s1").description.contains("identical to quarantined version \"s1\""))
        _ = try policy.release("s1")
        #expect(try policy.activate("s2", at: moment(4)).spawns == [.spawn(version: "s2", mode: .normal)])
    }

    @Test("activate and rollback while stopped by an operator switch the content but do not start it")
    func activateWhileStopped() throws {
        var policy = try candidatePolicy()
        policy.startAndBecomeReady(at: 0)
        _ = policy.handle(.stop, at: moment(5))
        _ = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(6))
        let rollback = try policy.rollback(to: nil, at: moment(7))
        #expect(rollback.contains(.switchContent(version: "v1")))
        #expect(rollback.spawns.isEmpty)
        #expect(policy.handle(.start, at: moment(8)) == [.spawn(version: "v1", mode: .normal)])
    }

    @Test("requests during backoff apply at once and in order: activate, then stop, then start")
    func commandsDuringBackoff() throws {
        var policy = try candidatePolicy()
        _ = policy.staged(record("v3"))
        policy.startAndCrash(at: 0)
        #expect(policy.phase == .backoff)
        let activate = try policy.activate("v3", at: moment(0.52))
        #expect(activate.contains(.disarm(.restart)))
        #expect(activate.spawns == [.spawn(version: "v3", mode: .normal)])
        _ = policy.handle(.stop, at: moment(0.53))
        #expect(policy.isStopping)
        // The process of the v3 start comes up after the stop: it is stopped, not left running,
        // and recorded as started, so that its exit does not stand alone in the log.
        let started = policy.handle(.agentStarted(pid: 20), at: moment(0.54))
        #expect(started.decision(.agentStarted)?.version == "v3")
        #expect(started.contains(.terminate(signal: SIGTERM)))
        #expect(started.deadline(of: .startedAfter) == nil, "no run timers for a run that is ending")
        #expect(policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(0.6)).spawns.isEmpty)
        #expect(policy.phase == .stopped)
        #expect(policy.handle(.start, at: moment(1)) == [.spawn(version: "v3", mode: .normal)])
        #expect(policy.ledger.active == "v3")
    }

    @Test("start during backoff skips the rest of the delay")
    func startDuringBackoff() throws {
        var policy = try candidatePolicy()
        policy.startAndCrash(at: 0)
        #expect(policy.handle(.start, at: moment(0.51)) == [.disarm(.restart), .spawn(version: "v2", mode: .normal)])
    }
}
