@testable import BackstopCore
import Foundation
import Testing

/// Each failure reason produced by a small agent written for it, recorded in the log and
/// in `status --json`, and content rolled back exactly when the attribution table says so.
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct FailureReasonTests {
    /// A shell agent whose behaviour is its content: the first word of `behaviour` in the
    /// content directory.
    struct ScriptAgent {
        let scratch: TemporaryDirectory
        let script: String

        init() throws {
            scratch = try TemporaryDirectory()
            script = scratch.path + "/agent.sh"
            try """
                #!/bin/sh
                read -r behaviour argument < "$1/behaviour"
                case "$behaviour" in
                run) exec sleep 3600 ;;
                exit3) sleep 0.2; exit 3 ;;
                clean) sleep 1.5; exit 0 ;;
                # Fork into the background (a new session, so only the subreaper keeps it in view) and exit 0.
                daemonize) setsid sleep 3600 </dev/null >/dev/null 2>&1 & exit 0 ;;
                # The same, clearing the environment (and so Backstop's mark) on the way.
                daemonize-unmarked) setsid env -i /bin/sleep 3600 </dev/null >/dev/null 2>&1 & sleep 0.2; exit 0 ;;
                # A background process that starts the real worker later, in a session of its own, and ends.
                daemonize-late) ( sleep 0.5; setsid sleep 3600 </dev/null >/dev/null 2>&1 & sleep 0.3; exit 0 ) </dev/null >/dev/null 2>&1 & exit 0 ;;
                # Join the memory cgroup the test made, then grow without bound until the OOM killer comes.
                oom) echo $$ > "$argument/cgroup.procs" && exec tail /dev/zero ;;
                # Runs unless the file named in the content exists; then it crashes, whatever the version.
                fragile) if [ -e "$argument" ]; then kill -SEGV $$; fi; exec sleep 3600 ;;
                # Leaves a child in a session of its own, then crashes.
                escape) setsid sleep 3600 </dev/null >/dev/null 2>&1 & sleep 0.3; kill -SEGV $$ ;;
                esac
                exit 9
                """.write(toFile: script, atomically: true, encoding: .utf8)
            chmod(script, 0o755)
        }

        /// A content directory telling the agent to behave `behaviour`.
        func content(_ name: String, _ behaviour: String) throws -> String {
            try scratch.makeDirectory(name, files: ["behaviour": behaviour + "\n"])
        }

        /// The `[[agent]]` body, with quick restarts unless told otherwise.
        func agent(_ extra: String = "", restartDelayMilliseconds: Int = 50, restartDelayMaxSeconds: Int = 1) -> String {
            """
            name = "script"
            exec = ["\(script)", "{content}"]
            failure_window_sec = 60
            restart_delay_ms = \(restartDelayMilliseconds)
            restart_delay_max_sec = \(restartDelayMaxSeconds)
            \(extra)
            """
        }
    }

    /// The processes of the agent `name` in `harness`, found by the mark in their environment.
    func agentProcesses(_ harness: DaemonHarness, _ name: String = "script") -> [Int32] {
        ProcessTable.processes(withEnvironment: LaunchRequest.storeVariable, value: harness.directory + "/state/" + name)
    }

    func reasons(_ agent: StatusReport.Agent) -> [String] { agent.failures.list.map(\.reason) }

    @Test("exit 0 every second or two (clean-exit) restarts the agent and never rolls the candidate back")
    func cleanExitsAreNotRolledBack() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("failure_threshold = 2")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("good", "run"), as: "v1", agent: "script")
        try harness.wait(for: "agent-ready")
        #expect(try harness.ctl("promote", "script", "v1").status == 0)
        try harness.stage(try agent.content("clean", "clean"), as: "v2", agent: "script")
        try harness.wait(for: "agent-exited", count: 5, after: "content-activated", seconds: 30)
        let status = try harness.agent("script")
        #expect(status.content.active == "v2")
        #expect(status.content.candidate == "v2")
        #expect(status.content.quarantined.isEmpty)
        #expect(!harness.log.all.contains { $0.contains("event=rollback") })
        #expect(reasons(status).filter { $0 == "clean-exit" }.count >= 4)
        #expect(status.failures.list.allSatisfy { $0.attribution == "restart-only" })
        #expect(status.failures.recent == 0, "recent counts only failures against the content")
    }

    @Test("clean_exit = normal: an agent that is ready and exits 0 every 1.5 s stays healthy and is restarted without growing delays")
    func cleanExitsAsNormalLife() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        // Ready after a second alive, done after 1.5 s. With backoff the delays would be 0.5, 1,
        // 2, 4, 8 s: the later runs would start 5.5 and 9.5 s apart.
        let harness = try DaemonHarness(agents: [agent.agent("clean_exit = \"normal\"", restartDelayMilliseconds: 500, restartDelayMaxSeconds: 30)])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("clean", "clean"), as: "v1", agent: "script")
        try harness.wait(for: "agent-started")
        var startedAt = [Date()]
        for run in 1...6 {
            try harness.wait(for: "agent-exited", count: run, seconds: 20)
            // Inside the 0.5 s restart delay: neither backoff nor degraded, and status exits 0.
            let (report, exitCode) = try harness.status()
            let status = try #require(report.agents.first)
            #expect(exitCode == 0, "run \(run): \(status.state) \(status.degradedReason ?? "")")
            #expect(status.state != "backoff" && !status.degraded, "run \(run): \(status.state) \(status.degradedReason ?? "")")
            #expect(status.failures.list.isEmpty, "a clean exit by design is not a failure: \(reasons(status))")
            try harness.wait(for: "agent-started", count: run + 1, seconds: 20)
            startedAt.append(Date())
        }
        let intervals = zip(startedAt.dropFirst(), startedAt).map { $0.timeIntervalSince($1) }
        // 1.5 s of work and 0.5 s of delay each time; slack for a loaded machine, below 5.5 s.
        #expect(intervals.allSatisfy { $0 < 4.5 }, "starts were \(intervals) s apart")
        let exits = harness.log.all.filter { $0.contains("event=agent-exited ") }
        #expect(exits.allSatisfy { $0.contains("clean-exit") }, "\(exits)")
        #expect(!harness.log.all.contains { $0.contains("event=crash-loop") || $0.contains("event=rollback") })
    }

    @Test("a SIGTERM from outside (killed-externally) restarts the agent without blaming the content")
    func killedExternally() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("failure_threshold = 1")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("good", "run"), as: "v1", agent: "script")
        try harness.wait(for: "agent-ready")
        for round in 1...2 {
            let pid = try #require(try harness.agent("script").pid)
            kill(pid, round == 1 ? SIGTERM : SIGKILL)
            try harness.wait(for: "agent-ready", count: round + 1, seconds: 20)
        }
        let status = try harness.agent("script")
        #expect(reasons(status) == ["killed-externally", "killed-externally"])
        #expect(status.content.active == "v1")
        #expect(status.content.quarantined.isEmpty, "with failure_threshold = 1 a counted failure would have quarantined v1")
        #expect(!harness.log.all.contains { $0.contains("event=crash-loop") })
        #expect(status.failures.list.first?.signal == "SIGTERM")
        #expect(status.failures.list.last?.signal == "SIGKILL")
    }

    @Test("a program that vanished (exec-failed) is retried with backoff and never rolled back")
    func programVanished() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("failure_threshold = 1")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("good", "run"), as: "v1", agent: "script")
        try harness.wait(for: "agent-ready")
        #expect(try harness.ctl("promote", "script", "v1").status == 0)
        try harness.stage(try agent.content("good2", "run"), as: "v2", agent: "script")
        try harness.wait(for: "agent-ready", count: 2)
        try FileManager.default.removeItem(atPath: agent.script)
        kill(try #require(try harness.agent("script").pid), SIGKILL)
        try harness.log.wait(for: "reason=exec-failed", count: 3, seconds: 20)
        let status = try harness.agent("script")
        #expect(status.state == "backoff")
        #expect(status.degraded)
        #expect(status.content.active == "v2", "the candidate is not blamed for a missing program")
        #expect(status.content.quarantined.isEmpty)
        #expect(reasons(status).contains("exec-failed"))
        #expect(status.failures.list.filter { $0.reason == "exec-failed" }.allSatisfy { $0.attribution == "configuration" })
        #expect(harness.log.all.contains { $0.contains("reason=exec-failed") && $0.contains("\(agent.script): no such file") })
        #expect(!harness.log.all.contains { $0.contains("event=rollback") })
    }

    @Test("an agent that forks into the background (daemonized) is not rolled back and never runs twice")
    func daemonizingAgent() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("failure_threshold = 1")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("bg", "daemonize"), as: "v1", agent: "script")
        try harness.log.wait(for: "reason=daemonized", seconds: 20)
        var status = try harness.agent("script")
        #expect(status.state == "backoff")
        #expect(status.degradedReason?.contains("daemonized") == true)
        #expect(status.content.active == "v1")
        #expect(status.content.quarantined.isEmpty)
        #expect(reasons(status) == ["daemonized"])
        #expect(harness.log.all.contains { $0.contains("reason=daemonized") && $0.contains("Foreground yes") })
        let background = agentProcesses(harness)
        #expect(background.count == 1, "the background process keeps running: \(background)")
        #expect(status.pid == background.first)

        // 30 times restart_delay_ms later: still exactly one instance, and no new start.
        usleep(1_500_000)
        #expect(harness.log.all.filter { $0.contains("event=agent-started") }.count == 1)
        #expect(agentProcesses(harness) == background)

        // When the background process ends, the agent is started again (and daemonizes again).
        kill(try #require(background.first), SIGKILL)
        // The second run's own agent-exited decision (other lines may name the reason too).
        try harness.log.wait("a second daemonized run", seconds: 20) { lines in
            lines.filter { $0.contains("event=agent-exited ") && $0.contains("reason=daemonized") }.count >= 2
        }
        #expect(harness.log.all.filter { $0.contains("event=agent-started") }.count == 2)
        status = try harness.agent("script")
        #expect(status.content.active == "v1")
        // The new background process may still be exec'ing sleep (its environment unreadable for that instant): found by its pid.
        let stray = try #require(status.pid)
        #expect(ProcessTable.isAlive(stray), "the new background process keeps running")
        #expect(agentProcesses(harness).allSatisfy { $0 == stray }, "never two instances")

        // A stop ends the background process too.
        #expect(try harness.ctl("stop", "script").status == 0)
        try harness.log.wait(for: "have exited", count: 2, seconds: 20)
        #expect(agentProcesses(harness).isEmpty)
        #expect(try harness.agent("script").state == "stopped")
    }

    @Test("an agent that forks into the background and clears its environment is still daemonized, and stop ends it")
    func daemonizingWithoutMark() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("failure_threshold = 1")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("bg", "daemonize-unmarked"), as: "v1", agent: "script")
        try harness.log.wait(for: "reason=daemonized", seconds: 20)
        let pid = try #require(try harness.agent("script").pid)
        #expect(!ProcessTable.hasMark(pid), "the background process carries no mark")
        usleep(1_500_000)  // 30 times restart_delay_ms: no second instance starts meanwhile
        #expect(harness.log.all.filter { $0.contains("event=agent-started") }.count == 1)
        #expect(try harness.ctl("stop", "script").status == 0)
        try harness.log.wait(for: "have exited", seconds: 20)
        #expect(!ProcessTable.isAlive(pid))
    }

    @Test("a daemonized agent whose background process hands over to a new one is still not started twice")
    func daemonizedHandOver() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent()])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("bg", "daemonize-late"), as: "v1", agent: "script")
        try harness.log.wait(for: "reason=daemonized", seconds: 20)
        // The first background process starts the worker after 0.5 s and ends 0.3 s later.
        usleep(2_000_000)
        #expect(harness.log.all.filter { $0.contains("event=agent-started") }.count == 1)
        let workers = agentProcesses(harness)
        #expect(workers.count == 1, "only the worker is left: \(workers)")
        #expect(try harness.agent("script").state == "backoff")
        #expect(try harness.ctl("stop", "script").status == 0)
        try harness.log.wait(for: "have exited", seconds: 20)
        #expect(agentProcesses(harness).isEmpty)
    }

    @Test("what a probe leaves behind is killed with it and never taken for the agent's")
    func probeLeftovers() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let probe = agent.scratch.path + "/leaky-check.sh"
        try "#!/bin/sh\nsetsid sleep 3600 </dev/null >/dev/null 2>&1 &\nexit 0\n".write(toFile: probe, atomically: true, encoding: .utf8)
        chmod(probe, 0o755)
        let harness = try DaemonHarness(agents: [agent.agent("ready_check_exec = [\"\(probe)\"]")])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("clean", "clean"), as: "v1", agent: "script")
        try harness.wait(for: "agent-exited", count: 2, seconds: 20)
        let status = try harness.agent("script")
        #expect(reasons(status).allSatisfy { $0 == "clean-exit" }, "\(reasons(status))")
        #expect(ProcessTable.processes(withEnvironment: LaunchRequest.probeStoreVariable, value: harness.directory + "/state/script").isEmpty)
    }

    @Test("a ready check whose program is missing is a configuration error: no rollback")
    func missingReadyCheckProgram() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("""
            failure_threshold = 1
            ready_check_exec = ["\(agent.scratch.path)/missing-check"]
            """)])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("good", "run"), as: "v1", agent: "script")
        try harness.log.wait(for: "reason=exec-failed", count: 2, seconds: 20)
        let status = try harness.agent("script")
        #expect(status.content.active == "v1")
        #expect(status.content.quarantined.isEmpty)
        #expect(status.failures.list.allSatisfy { $0.reason == "exec-failed" && $0.attribution == "configuration" })
        #expect(harness.log.all.contains { $0.contains("cannot run") && $0.contains("missing-check: no such file") })
    }

    @Test("a health check that hangs is killed at its timeout and counted as health-check")
    func hangingHealthCheck() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("""
            health_check_exec = ["/bin/sleep", "613.25"]
            health_check_interval_sec = 1
            health_check_timeout_sec = 1
            health_check_failures = 2
            """)])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("good", "run"), as: "v1", agent: "script")
        try harness.wait(for: "agent-hung", seconds: 20)
        try harness.wait(for: "agent-exited", seconds: 20)
        // The next run: stopped while (or just before) its first health check runs.
        try harness.wait(for: "agent-ready", count: 2, seconds: 20)
        #expect(try harness.ctl("stop", "script").status == 0)
        try harness.wait(for: "agent-exited", count: 2, seconds: 20)
        let status = try harness.agent("script")
        #expect(reasons(status) == ["health-check"])
        #expect(status.failures.list.first?.attribution == "content")
        #expect(status.failures.recent == 1)
        #expect(harness.log.all.contains { $0.contains("timed out after 1 s and was killed") })
        #expect(harness.log.all.contains { $0.contains("event=agent-hung") && $0.contains("reason=health-check") })
        // A duration of this test's own: other suites' agents run `sleep 600` at the same time.
        let probes = ProcessTable.entries().filter {
            (try? String(contentsOfFile: "/proc/\($0.pid)/cmdline", encoding: .utf8))?.contains("sleep\u{0}613.25") == true
        }
        #expect(probes.isEmpty, "hung probes are killed, not left behind")
    }

    @Test("an agent that is restarted and not ready since is degraded: status exits 1 while it starts again")
    func restartedAndNotReadyIsDegraded() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("""
            ready_check_exec = ["/bin/sh", "-c", "test -e \(agent.scratch.path)/ready"]
            start_timeout_sec = 600
            """)])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("good", "run"), as: "v1", agent: "script")
        try harness.wait(for: "agent-started")
        #expect(try harness.status().exitCode == 0, "starting for the first time is not degraded")
        kill(try #require(try harness.agent("script").pid), SIGTERM)
        try harness.wait(for: "agent-started", count: 2, seconds: 20)
        let (report, exitCode) = try harness.status()
        let status = try #require(report.agents.first { $0.name == "script" })
        #expect(status.state == "starting")
        #expect(exitCode == 1, "restarted after killed-externally and not ready since")
        #expect(status.degradedReason?.hasPrefix("restarting after 1 failure") == true, "\(status.degradedReason ?? "nil")")
        try #require(FileManager.default.createFile(atPath: agent.scratch.path + "/ready", contents: nil))
        try harness.wait(for: "agent-ready", seconds: 20)
        #expect(try harness.status().exitCode == 0, "ready again")
    }

    @Test("a first version whose agent never becomes ready is not promoted, nor quarantined with nothing to compare it with; once its ready check passes it is promoted")
    func neverReadyIsNotPromoted() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [agent.agent("""
            ready_check_exec = ["/bin/sh", "-c", "test -e \(agent.scratch.path)/ready"]
            start_timeout_sec = 2
            probation_sec = 1
            failure_threshold = 2
            """)])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("good", "run"), as: "v1", agent: "script")
        try harness.wait(for: "crash-loop", seconds: 30)
        #expect(harness.log.all.contains { $0.contains("event=crash-loop") && $0.contains("reason=no-comparison") })
        let status = try harness.agent("script")
        #expect(reasons(status).allSatisfy { $0 == "start-timeout" })
        #expect(status.content.quarantined.isEmpty && status.content.candidate == "v1")
        #expect(status.content.knownGood == nil)
        #expect(status.firstContentFailure?.failure.hasPrefix("start-timeout") == true)
        #expect(!harness.log.all.contains { $0.contains("event=content-promoted") || $0.contains("event=agent-ready") })
        #expect(!harness.log.all.contains { $0.contains("event=agent-hung") }, "a start that timed out did not hang")
        #expect(harness.log.all.contains { $0.contains("event=agent-exited") && $0.contains("reason=start-timeout") })

        // Once the check passes, the version, still retried, becomes ready and is promoted.
        try #require(FileManager.default.createFile(atPath: agent.scratch.path + "/ready", contents: nil))
        try harness.wait(for: "content-promoted", seconds: 20)
        #expect(try harness.agent("script").content.knownGood == "v1")
    }

    @Test("an agent killed by the OOM killer fails with oom-killed, which counts against the content",
          .enabled(if: MemoryCgroup.writable, "needs a writable memory cgroup (cgroup v2 or the v1 memory controller) to limit the agent's memory"))
    func oomKilled() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let cgroup = try MemoryCgroup(limitBytes: 32 << 20)
        defer { cgroup.remove() }
        // The agent moves itself into the cgroup: it must be writable in the agent's sandbox.
        let harness = try DaemonHarness(agents: [agent.agent("failure_threshold = 2\n" + DaemonHarness.testSandbox.replacingOccurrences(
            of: "read_write_paths = [", with: "read_write_paths = [\"\(cgroup.path)\", "))])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("good", "run"), as: "v1", agent: "script")
        try harness.wait(for: "agent-ready")
        #expect(try harness.ctl("promote", "script", "v1").status == 0)
        try harness.stage(try agent.content("hog", "oom \(cgroup.path)"), as: "v2", agent: "script")
        try harness.wait(for: "rollback", seconds: 60)
        let status = try harness.agent("script")
        #expect(status.content.active == "v1")
        #expect(status.content.quarantined == ["v2"])
        let exits = harness.log.all.filter { $0.contains("event=agent-exited") && $0.contains("version=v2") }
        #expect(exits.count == 2)
        #expect(exits.allSatisfy { $0.contains("reason=oom-killed") && $0.contains("ran out of memory") })
    }

    @Test("when the known-good version fails the same way after a rollback, versions are not switched again")
    func rollbackThatDidNotHelp() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let broken = agent.scratch.path + "/broken"
        let harness = try DaemonHarness(agents: [agent.agent("failure_threshold = 2")])
        defer { harness.cleanUp() }
        try harness.start()
        for version in ["v0", "v1"] {
            try harness.stage(try agent.content(version, "fragile \(broken)"), as: version, agent: "script")
            try harness.wait(for: "agent-ready", count: version == "v0" ? 1 : 2)
            #expect(try harness.ctl("promote", "script", version).status == 0)
        }
        // Something outside the content breaks the agent just as v2 arrives.
        try #require(FileManager.default.createFile(atPath: broken, contents: nil))
        try harness.stage(try agent.content("v2", "fragile \(broken)"), as: "v2", agent: "script")
        try harness.wait(for: "gave-up", seconds: 30)
        let status = try harness.agent("script")
        #expect(status.state == "given-up")
        #expect(status.degradedReason?.hasPrefix("given up: rolling back did not help, the agent fails the same way on known-good content, and no safe_mode_exec is configured; evidence: 2 failures within 60 s on content v1 (crashed SIGSEGV)") == true, "\(status.degradedReason ?? "")")
        #expect(status.escalation?.step == "given-up")
        #expect(status.escalation?.reason == "no-safe-mode-exec")
        #expect(status.escalation?.version == "v1")
        #expect(status.content.active == "v1", "no further switch to the older known-good v0")
        #expect(status.content.quarantined == ["v2"])
        #expect(harness.log.all.filter { $0.contains("event=rollback") }.count == 1)
        #expect(harness.log.all.contains { $0.contains("event=crash-loop") && $0.contains("reason=rollback-did-not-help") })
        #expect(agentProcesses(harness).isEmpty)
    }

    @Test("a process that left the agent's session is killed when the agent crashes")
    func escapedChildDiesWithItsAgent() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        // A long backoff: nothing runs again while the test looks.
        let harness = try DaemonHarness(agents: [agent.agent("failure_threshold = 1", restartDelayMilliseconds: 60000, restartDelayMaxSeconds: 60)])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("bad", "escape"), as: "v1", agent: "script")
        try harness.wait(for: "crash-loop", seconds: 20)
        #expect(harness.log.all.contains { $0.contains("event=agent-exited") && $0.contains("reason=crashed") })
        #expect(agentProcesses(harness).isEmpty, "the setsid child was killed with its agent")
    }

    @Test("requests during a backoff are applied at once and in order: activate, stop, start")
    func requestsDuringBackoff() throws {
        let agent = try ScriptAgent()
        defer { agent.scratch.remove() }
        let harness = try DaemonHarness(agents: [
            agent.agent("failure_threshold = 5", restartDelayMilliseconds: 60000, restartDelayMaxSeconds: 60)
        ])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(try agent.content("failing", "exit3"), as: "v1", agent: "script")
        try harness.log.wait(for: "reason=exited", seconds: 20)
        #expect(try harness.agent("script").state == "backoff")
        // The restart is a minute away; the activation starts v2 now.
        try harness.stage(try agent.content("good", "run"), as: "v2", agent: "script")
        try harness.wait(for: "agent-ready", seconds: 10)
        #expect(try harness.agent("script").content.active == "v2")
        #expect(try harness.ctl("stop", "script").status == 0)
        var status = try harness.agent("script")
        #expect(status.state == "stopped")
        #expect(status.stoppedByOperator)
        #expect(!status.degraded, "stopped by an operator is not degraded")
        try harness.wait(for: "agent-exited", count: 2, seconds: 10)
        #expect(agentProcesses(harness).isEmpty)
        #expect(try harness.ctl("start", "script").status == 0)
        try harness.wait(for: "agent-ready", count: 2, seconds: 10)
        status = try harness.agent("script")
        #expect(status.state == "running")
        #expect(status.content.active == "v2")
        #expect(status.probation?.requiredSec == 600)
        #expect(!status.stoppedByOperator)
        #expect(try harness.ctl("start", "script").output.contains("already running"))

        // A stop survives a daemon restart.
        #expect(try harness.ctl("stop", "script").status == 0)
        harness.stop()
        try harness.start()
        #expect(try harness.agent("script").state == "stopped")
        #expect(agentProcesses(harness).isEmpty)
    }
}

/// A memory cgroup with a limit, for an agent that should be OOM-killed without
/// troubling the rest of the machine: cgroup v2 where mounted, else the v1 memory controller.
struct MemoryCgroup {
    let path: String

    /// The directory new groups are made in, nil when none is writable.
    static let parent: String? = {
        let unified = "/sys/fs/cgroup/cgroup.controllers"
        if let controllers = try? String(contentsOfFile: unified, encoding: .utf8), controllers.contains("memory"),
            access("/sys/fs/cgroup", W_OK) == 0
        {
            return "/sys/fs/cgroup"
        }
        guard let lines = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8) else { return nil }
        for line in lines.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2).map(String.init)
            guard fields.count == 3, fields[1].split(separator: ",").contains("memory") else { continue }
            let directory = "/sys/fs/cgroup/memory" + fields[2]
            if access(directory, W_OK) == 0 { return directory }
        }
        return nil
    }()

    static var writable: Bool { parent != nil }

    init(limitBytes: Int) throws {
        guard let parent = Self.parent else { throw HarnessError.failed("no writable memory cgroup") }
        path = parent + "/backstop-test-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        let v2 = FileManager.default.fileExists(atPath: path + "/memory.max")
        try String(limitBytes).write(toFile: path + (v2 ? "/memory.max" : "/memory.limit_in_bytes"), atomically: false, encoding: .utf8)
        if v2 { try? "0".write(toFile: path + "/memory.swap.max", atomically: false, encoding: .utf8) }
    }

    /// Kills what is left in the group and removes it.
    func remove() {
        if let procs = try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8) {
            for pid in procs.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
        }
        for _ in 0..<50 where rmdir(path) != 0 { usleep(20_000) }
    }
}
