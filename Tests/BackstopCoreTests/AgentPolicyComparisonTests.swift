import Foundation
import Testing
@testable import BackstopCore

@Suite("AgentPolicy: no verdict against content without a comparison")
struct AgentPolicyComparisonTests {
    /// A policy on its first content, v1, just activated; v2 staged beside it.
    func firstContentPolicy(_ settings: PolicySettings = policySettings()) throws -> AgentPolicy {
        var policy = AgentPolicy(settings: settings, ledger: makeLedger(staged: ["v1", "v2"]))
        _ = try policy.activate("v1", at: moment(0))
        return policy
    }

    /// The agent starts at `seconds` and exits 1 at once, its output showing `obstacle`.
    @discardableResult
    func startAndExit(_ policy: inout AgentPolicy, at seconds: Double, obstacle: SandboxObstacle?) -> [PolicyAction] {
        policy.handle(.agentStarted(pid: 77), at: moment(seconds))
            + policy.handle(.agentExited(.exited(code: 1), obstacle: obstacle), at: moment(seconds + 0.2))
    }

    @Test("a fork refused for the process limit on known-good content is restart only; on a candidate with a known-good version it counts")
    func processLimitOnKnownGood() throws {
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        var actions: [PolicyAction] = []
        var now: Double = 0
        for _ in 0..<5 {
            actions += startAndExit(&policy, at: now, obstacle: .processLimit)
            now = try #require(policy.timers[.restart])
            actions += policy.fireRestart()
        }
        #expect(!actions.events.contains(.crashLoop) && !actions.events.contains(.safeMode) && !actions.events.contains(.gaveUp))
        #expect(actions.decision(.agentExited)?.message.contains("not counted against it") == true)
        #expect(policy.ledger.active == "v1")

        policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v2"))
        _ = policy.handle(.begin(), at: moment(0))
        actions = []
        now = 0
        for _ in 0..<3 {
            actions += startAndExit(&policy, at: now, obstacle: .processLimit)
            guard let due = policy.timers[.restart] else { break }
            now = due
            actions += policy.fireRestart()
        }
        #expect(actions.events.contains(.contentQuarantined) && policy.ledger.quarantined == ["v2"])
    }

    @Test("a crash loop on the first content is reported with the sandbox setting to open, never quarantined; retried with capped backoff")
    func firstContentCrashLoopIsReportedAndRetried() throws {
        var policy = try firstContentPolicy(policySettings(restartDelayMaxSeconds: 4))
        var now: Double = 0
        var actions: [PolicyAction] = []
        var delays: [Double] = []
        for _ in 0..<8 {
            actions += startAndExit(&policy, at: now, obstacle: .readOnlyFileSystem)
            #expect(policy.phase == .backoff)
            let due = try #require(policy.timers[.restart])
            delays.append(((due - (now + 0.2)) * 100).rounded() / 100)
            actions += policy.fireRestart()
            now = due
        }
        #expect(delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 4, 4], "doubling up to restart_delay_max_sec, then steady")
        #expect(!actions.events.contains(.contentQuarantined))
        #expect(!actions.events.contains(.rollback) && !actions.events.contains(.safeMode) && !actions.events.contains(.gaveUp))
        #expect(policy.ledger.quarantined.isEmpty && policy.ledger.candidate == "v1")
        #expect(actions.spawns.count == 8 && actions.spawns.allSatisfy { $0 == .spawn(version: "v1", mode: .normal) })

        // One crash-loop decision for the same failure, with the reason and the setting.
        let loops = actions.compactMap { action -> Decision? in
            if case .record(let decision) = action, decision.event == .crashLoop { return decision }
            return nil
        }
        #expect(loops.count == 1)
        let loop = try #require(loops.first)
        #expect(loop.reason == "no-comparison")
        #expect(loop.version == "v1" && loop.exitStatus == 1 && loop.failures == 3)
        #expect(loop.message.contains("no known-good version exists to compare it with"))
        #expect(loop.message.contains("read_write_paths") && loop.message.contains("backstopctl sandbox demo"))
        // Every exit says what the output showed.
        #expect(actions.decision(.agentExited)?.message.contains("read-only file system (EROFS)") == true)
        #expect(policy.escalationState.failures.last?.obstacle == .readOnlyFileSystem)

        // Status: degraded, with the reason and the setting.
        let failing = try #require(policy.escalationState.firstContentFailure)
        #expect(failing.version == "v1" && failing.failure == "exited" && failing.obstacle == .readOnlyFileSystem)
        #expect(policy.isDegraded)
        let reason = try #require(policy.degradedReason)
        #expect(reason.contains("failing on its first content v1") && reason.contains("open read_write_paths"))
        let status = StatusReport.Agent(policy: policy, pid: nil, statusText: nil, at: moment(now))
        #expect(status.firstContentFailure?.setting == "read_write_paths")
        #expect(status.firstContentFailure?.obstacle == "read-only-file-system")
        #expect(status.failures.list.last?.obstacle == "read-only-file-system")

        // Kept in the state file across a daemon restart.
        var restored = AgentPolicy(settings: policy.settings)
        restored.restore(from: policy.stateFile(bootID: "b", at: moment(now)), currentBootID: "b")
        #expect(restored.escalationState.firstContentFailure == failing)
    }

    @Test("another failure or obstacle is reported again; nothing in the output reports no setting")
    func changedFailureIsReportedAgain() throws {
        var policy = try firstContentPolicy()
        var now: Double = 0
        var actions: [PolicyAction] = []
        for obstacle in [nil, nil, nil, SandboxObstacle.processLimit] as [SandboxObstacle?] {
            actions += startAndExit(&policy, at: now, obstacle: obstacle)
            actions += policy.fireRestart()
            now += 40
        }
        let loops = actions.compactMap { action -> Decision? in
            if case .record(let decision) = action, decision.event == .crashLoop { return decision }
            return nil
        }
        #expect(loops.count == 2)
        #expect(loops.first?.message.contains("backstopctl sandbox") == false, "no obstacle, no setting named")
        #expect(loops.last?.message.contains("tasks_max") == true)
        #expect(policy.escalationState.firstContentFailure?.obstacle == .processLimit)
        #expect(policy.escalationState.firstContentFailure?.since == moment(0.2 + 80).wall, "since the first crash loop, not the last")
    }

    @Test("once the sandbox is fixed the first content runs, passes probation and the report clears")
    func fixedSandboxBringsItUp() throws {
        var policy = try firstContentPolicy(policySettings(probationSeconds: 100, restartDelayMaxSeconds: 30))
        let (_, now) = policy.crashUntilCrashLoop(from: 0)
        #expect(policy.escalationState.firstContentFailure != nil)
        #expect(policy.phase.isStarting, "restarted after the crash loop")
        let ready = policy.startAndBecomeReady(at: now)
        #expect(ready.events.contains(.agentReady))
        #expect(policy.escalationState.firstContentFailure != nil, "one start is no healthy run yet")
        let reset = try #require(policy.timers[.backoffReset])
        _ = policy.handle(.timerFired(.backoffReset, deadline: reset), at: moment(reset))
        #expect(policy.escalationState.firstContentFailure == nil, "a healthy run of restart_delay_max_sec clears it")
        #expect(!policy.isDegraded)
        let probation = try #require(policy.timers[.probation])
        #expect(policy.handle(.timerFired(.probation, deadline: probation), at: moment(probation)).events == [.contentPromoted])
        #expect(policy.ledger.knownGood == "v1")
    }

    @Test("with a known-good version to compare with, the same failures quarantine the candidate and roll back")
    func laterGoodVersionGivesAComparison() throws {
        var policy = try firstContentPolicy()
        var (_, now) = policy.crashUntilCrashLoop(from: 0)
        #expect(policy.ledger.quarantined.isEmpty)

        // The operator stages a version that works: it runs through probation.
        _ = try policy.activate("v2", at: moment(now))
        _ = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(now))
        #expect(policy.escalationState.firstContentFailure == nil)
        #expect(policy.ledger.record("v1")?.standing == .staged)
        policy.startAndBecomeReady(at: now)
        let probation = try #require(policy.timers[.probation])
        _ = policy.handle(.timerFired(.probation, deadline: probation), at: moment(probation))
        #expect(policy.ledger.knownGood == "v2")
        now = probation + 1

        // v1 again: now there is a comparison, and the crash loop is a verdict.
        _ = try policy.activate("v1", at: moment(now))
        _ = policy.handle(.agentExited(.signaled(signal: SIGTERM)), at: moment(now))
        var actions: [PolicyAction] = []
        for _ in 0..<3 {
            actions += startAndExit(&policy, at: now, obstacle: .readOnlyFileSystem)
            now += 1
            if policy.phase == .backoff { actions += policy.fireRestart(); now = max(now, policy.timers[.restart] ?? now) + 1 }
        }
        #expect(actions.decision(.crashLoop)?.reason == "exited")
        #expect(actions.decision(.contentQuarantined)?.version == "v1")
        #expect(actions.decision(.rollback)?.version == "v2")
        #expect(policy.ledger.quarantined == ["v1"])
        #expect(policy.escalationState.firstContentFailure == nil)
    }

    @Test("a failed preflight is a verdict only against a control that passed")
    func preflightControl() throws {
        // No version to run as a control: the first content.
        var first = AgentPolicy(settings: policySettings(), ledger: makeLedger(staged: ["v1"]))
        let none = first.preflightFailed("v1", reason: .exited, detail: "exit code 1", control: .none, at: moment(1))
        #expect(none.events == [.preflightFailed])
        #expect(none.decision(.preflightFailed)?.reason == "no-control")
        #expect(first.ledger.record("v1")?.standing == .staged)
        #expect(first.activationRefusal("v1") == nil)

        // The control failed too: the preflight cannot judge the agent here.
        var policy = AgentPolicy(settings: policySettings(), ledger: makeLedger(knownGood: ["v1"], staged: ["v2"], active: "v1"))
        _ = policy.handle(.begin(), at: moment(0))
        let failed = policy.preflightFailed(
            "v2", reason: .exited, detail: "exit code 1", control: .failed(version: "v1", detail: "exit code 1", obstacle: .network), at: moment(2))
        #expect(failed.events == [.preflightFailed])
        let decision = try #require(failed.decision(.preflightFailed))
        #expect(decision.reason == "control-failed")
        #expect(decision.previousVersion == "v1")
        #expect(decision.message.contains("cannot judge this agent on this host"))
        #expect(decision.message.contains("network of its own"))
        #expect(decision.message.contains("activated under normal probation"))
        #expect(policy.ledger.quarantined.isEmpty)
        let status = StatusReport.Agent(policy: policy, pid: nil, statusText: nil, at: moment(3))
        #expect(status.lastPreflightFailure?.verdict == "control-failed")
        #expect(status.lastPreflightFailure?.control == "v1")
        #expect(status.lastPreflightFailure?.controlDetail == "exit code 1")
        #expect(policy.stateFile(bootID: "b", at: moment(3)).lastPreflightFailure?.verdict == .controlFailed)

        // The control passed: the candidate is refused.
        let passed = policy.preflightFailed("v2", reason: .exited, detail: "exit code 1", control: .passed(version: "v1"), at: moment(4))
        #expect(passed.events == [.preflightFailed, .contentQuarantined])
        #expect(policy.ledger.quarantined == ["v2"])
    }

    @Test("check-config warns about what makes a preflight differ from the live agent: the host's network, pid files and locks among the writable paths")
    func preflightDifferenceWarnings() throws {
        let directory = try makeTemporaryDirectory()
        defer { ContentStore.removeTree(directory) }
        try write("123\n", to: directory + "/lockdir/agent.pid")
        try write("data", to: directory + "/data/db")
        func warnings(_ body: String) throws -> [String] {
            try Configuration.parse("[[agent]]\nname = \"a\"\nexec = [\"/bin/true\"]\n" + body, path: "/x.toml").warnings
                .filter { $0.hasPrefix("agent a: preflight: ") }
        }
        let differing = try warnings("""
            preflight_sec = 5
            [agent.sandbox]
            private_network = false
            read_write_paths = ["\(directory)/lockdir", "\(directory)/data"]
            """)
        #expect(differing.count == 2, "\(differing)")
        #expect(differing.contains { $0.contains("a preflight instance has a network of its own") && $0.contains("private_network = false") })
        #expect(differing.contains { $0.contains("read_write_paths entry \(directory)/lockdir looks like a pid file or lock directory") })
        #expect(try warnings("preflight_sec = 5\n[agent.sandbox]\nread_write_paths = [\"\(directory)/data\"]").isEmpty, "a private network and plain data: no difference")
        #expect(try warnings("[agent.sandbox]\nprivate_network = false").isEmpty, "without preflight nothing differs")
    }

    @Test("the output tail passes everything on in order and keeps the last 4 KiB, up to what was written before the writer closed")
    func outputTail() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]) }
        let tail = OutputTail()
        let writeEnd = try tail.attach(relayingTo: ends[1])
        close(ends[1])
        let lines = (0..<600).map { "line \($0)\n" }.joined()
        let bytes = Array(lines.utf8)
        #expect(bytes.withUnsafeBytes { write(writeEnd.rawValue, $0.baseAddress, $0.count) } == bytes.count)
        try writeEnd.close()
        tail.settle()
        #expect(tail.text == String(decoding: bytes.suffix(OutputTail.keptBytes), as: UTF8.self))
        var relayed: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(ends[0], &buffer, buffer.count)
            guard count > 0 else { break }
            relayed += buffer[0..<count]
        }
        #expect(relayed == bytes, "the destination got every byte, in order, and end of file once the writer was gone")
    }

    @Test("the sandbox obstacles an agent's output names", arguments: [
        ("clamd[12]: ERROR: Can't open /var/log/clamav/clamav.log in append mode (check permissions!).\nLibClamAV Error: Read-only file system", SandboxObstacle.readOnlyFileSystem),
        ("touch: cannot touch '/var/run/fail2ban/fail2ban.pid': Permission denied", .permissionDenied),
        ("bash: fork: retry: Resource temporarily unavailable", .processLimit),
        ("sh: 1: Cannot fork", .processLimit),
        ("  File \"/usr/lib/python3/dist-packages/agent.py\", line 9, in run\n    pid = os.fork()\nBlockingIOError: [Errno 11] Resource temporarily unavailable", .processLimit),
        ("ERROR: Can't open /var/log/clamav/clamav.log in append mode (check permissions!).", .permissionDenied),
        ("dial tcp 127.0.0.1:8080: connect: connection refused", .network),
        ("bind: Address already in use", .addressInUse),
        ("Failed to connect to bus: Permission denied", .serviceManager),
        ("dbus: Failed to connect to socket /run/dbus/system_bus_socket: Connection refused", .serviceManager),
    ])
    func obstacles(output: String, expected: SandboxObstacle) {
        #expect(SandboxObstacle.find(in: output) == expected)
    }

    @Test("a connection refused under a private network names abstract Unix sockets too: they belong to the network namespace")
    func networkRemedyNamesAbstractSockets() {
        let sentence = SandboxObstacle.network.sentence(agent: "usbguard")
        #expect(sentence.contains("set private_network = false"), "\(sentence)")
        #expect(sentence.contains("abstract Unix sockets"), "\(sentence)")
    }

    @Test("ready and health checks have journal identifiers of their own, never the agent's")
    func checkIdentifiers() {
        #expect(Probe.ready.journalIdentifier(agent: "clamd") == "clamd-ready-check")
        #expect(Probe.health.journalIdentifier(agent: "clamd") == "clamd-health-check")
    }

    @Test("output that names no obstacle, or only an EAGAIN that is not fork's, names none; the last line that names one wins")
    func noObstacle() {
        #expect(SandboxObstacle.find(in: "LibClamAV Error: Malformed database\n") == nil)
        #expect(SandboxObstacle.find(in: "read: Resource temporarily unavailable") == nil)
        #expect(SandboxObstacle.find(in: "open: Permission denied\nwrite: Read-only file system\nexiting") == .readOnlyFileSystem)
    }
}
