import Foundation
import Testing
@testable import BackstopCore

/// Preflight: a staged version runs once in a throwaway, sandboxed instance before the live
/// agent ever loads it.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only, and bubblewrap runs as root"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: BubblewrapSandbox.program), "needs bubblewrap: `make test` installs it"))
struct PreflightTests {
    /// The demo agent with a watchdog and preflight on, in the default sandbox, running known-good v1.
    func harnessOnKnownGood(preflightSeconds: Int) throws -> DaemonHarness {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: """
            notify = true
            watchdog_sec = 2
            probation_sec = 60
            restart_delay_ms = 50
            preflight_sec = \(preflightSeconds)
            [agent.sandbox]
            private_network = true
            """)])
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1")
        try harness.wait(for: "agent-ready")
        #expect(try harness.ctl("promote", "demo", "v1").status == 0)
        return harness
    }

    @Test("A version that crashes or hangs in its preflight is quarantined with a preflight-failed entry; the live agent keeps its pid and content",
          arguments: [("v2-channel-291", "crashed"), ("hang", "hung")])
    func badVersionNeverGoesLive(_ sample: String, _ reason: String) throws {
        let harness = try harnessOnKnownGood(preflightSeconds: 5)
        defer { harness.cleanUp() }
        let live = try #require(try harness.agent().pid)
        let staged = try harness.ctl("stage", "demo", Paths.sample(sample), "--version", "v2", "--activate")
        #expect(staged.status != 0)
        #expect(staged.error.contains("content v2 failed preflight") && staged.error.contains("the live agent never loaded it"), "\(staged.error)")
        let failed = try #require(harness.log.all.first { $0.contains("event=preflight-failed") })
        #expect(failed.contains("version=v2") && failed.contains("reason=\(reason)"), "\(failed)")
        #expect(failed.contains("the control, content v1, passed the same preflight"), "judged against the active version: \(failed)")
        #expect(harness.log.all.contains { $0.contains("running content v1 through the same preflight as a control") })
        #expect(try harness.agent().lastPreflightFailure?.verdict == "quarantined")
        #expect(harness.log.all.contains { $0.contains("event=content-quarantined") && $0.contains("reason=preflight-failed") })
        let agent = try harness.agent()
        #expect(agent.pid == live, "the live agent was never restarted")
        #expect(agent.content.active == "v1" && agent.content.candidate == nil)
        #expect(agent.content.quarantined == ["v2"])
        #expect(agent.failures.recent == 0)
        #expect(!harness.log.all.contains { $0.contains("version=v2") && ($0.contains("event=agent-started") || $0.contains("event=content-activated")) })
        // Quarantined means refused from now on, without another preflight, also under another id.
        #expect(try harness.ctl("activate", "demo", "v2").error.contains("quarantined"))
        let again = try harness.ctl("stage", "demo", Paths.sample(sample), "--version", "v3")
        #expect(again.status != 0 && again.error.contains("identical to quarantined version \"v2\""), "\(again.error)")
        #expect(harness.log.all.filter { $0.contains("Preflight of content v2") }.count == 1)
    }

    @Test("A preflight instance cannot reach the live agent (its own PID namespace) or its writable directories (private copies, also behind a symlink), and nothing it starts outlives it")
    func preflightIsContained() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        // The live agent's writable directories: one named directly, one through a symlink.
        let data = try scratch.makeDirectory("data", files: ["kept": "live\n"])
        let data2 = try scratch.makeDirectory("data2", files: ["kept": "live\n"])
        #expect(chmod(data, 0o777) == 0 && chmod(data2, 0o777) == 0)
        try FileManager.default.createSymbolicLink(atPath: scratch.path + "/link", withDestinationPath: data2)
        let script = """
            if [ -e "$BACKSTOP_CONTENT/hostile" ]; then
                for directory in \(data) \(scratch.path)/link; do echo pwned > "$directory/pwned"; echo pwned > "$directory/kept"; done
                for process in /proc/[0-9]*; do [ "${process#/proc/}" = $$ ] || kill -9 "${process#/proc/}" 2>/dev/null; done
                setsid sleep 600 &
                sleep 600 &
                exit 3
            fi
            exec sleep 600
            """
        let good = try scratch.makeDirectory("good", files: ["agent.sh": script])
        let hostile = try scratch.makeDirectory("hostile", files: ["agent.sh": script, "hostile": ""])
        let harness = try DaemonHarness(agents: ["""
            name = "script"
            exec = ["/bin/sh", "{content}/agent.sh"]
            preflight_sec = 2
            [agent.sandbox]
            read_write_paths = ["\(data)", "\(scratch.path)/link"]
            """])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(good, as: "v1", agent: "script")
        try harness.wait(for: "agent-ready")
        let live = try #require(try harness.agent("script").pid)
        let staged = try harness.ctl("stage", "script", hostile, "--version", "v2", "--activate")
        #expect(staged.status != 0 && staged.error.contains("failed preflight (exit code 3)"), "\(staged.error)")
        let agent = try harness.agent("script")
        #expect(agent.pid == live && agent.state == "running", "the preflight could not kill the live agent, which runs as the same user")
        #expect(agent.content.quarantined == ["v2"])
        let left = ProcessTable.processes(withEnvironment: LaunchRequest.preflightStoreVariable, value: harness.directory + "/state/script")
        #expect(left.isEmpty, "processes the preflight started are gone: \(left)")
        for directory in [data, data2] {
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["kept"], "\(directory)")
            #expect(try String(contentsOfFile: directory + "/kept", encoding: .utf8) == "live\n")
        }
    }

    @Test("A writable path the preflight cannot copy (a kernel interface in /proc, as /proc/sysrq-trigger) is bound live as for the agent: a good version passes its preflight, a bad one still fails it, and --check-config says so")
    func preflightBindsKernelInterfaceLive() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        // bubblewrap's /proc has /proc/sys read-only, as /proc/sysrq-trigger (which some
        // machines lack). The agent writes nothing there: it checks that it could.
        let interface = "/proc/sys/vm/drop_caches"
        let script = """
            [ -w \(interface) ] || exit 4
            [ -e "$BACKSTOP_CONTENT/bad" ] && exit 3
            exec sleep 600
            """
        let good = try scratch.makeDirectory("good", files: ["agent.sh": script])
        let good2 = try scratch.makeDirectory("good2", files: ["agent.sh": script, "second": ""])
        let bad = try scratch.makeDirectory("bad", files: ["agent.sh": script, "bad": ""])
        let harness = try DaemonHarness(agents: ["""
            name = "script"
            exec = ["/bin/sh", "{content}/agent.sh"]
            preflight_sec = 2
            [agent.sandbox]
            user = "root"
            read_write_paths = ["\(interface)"]
            """])
        defer { harness.cleanUp() }
        let check = try Command.run(Paths.binary("backstopd"), ["--check-config", "--config", harness.configPath])
        #expect(check.status == 0, "\(check.error)")
        #expect((check.output + check.error).contains("read_write_paths \(interface) is a device or kernel interface, which the preflight cannot copy"),
                "\(check.output)\(check.error)")
        try harness.start()
        try harness.stage(good, as: "v1", agent: "script")
        try harness.wait(for: "agent-ready")
        let passed = try harness.ctl("stage", "script", good2, "--version", "v2", "--activate")
        #expect(passed.status == 0, "\(passed.error)")
        let refused = try harness.ctl("stage", "script", bad, "--version", "v3", "--activate")
        #expect(refused.status != 0 && refused.error.contains("failed preflight (exit code 3)"), "\(refused.error)")
        #expect(try harness.agent("script").content.quarantined == ["v3"])
    }

    @Test("Content below a directory the agent's user cannot search: unreachable on the host's /tmp, so the preflight could not run and the version stays staged; reachable in a private /tmp, so it goes live",
          arguments: [false, true])
    func contentBehindAClosedDirectory(privateTmp: Bool) throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: "preflight_sec = 2\n[agent.sandbox]\nprivate_tmp = \(privateTmp)")])
        defer { harness.cleanUp() }
        try harness.start()
        // The store now lies below a directory user nobody cannot search (on the host).
        #expect(chmod(harness.directory, 0o700) == 0)
        let staged = try harness.ctl("stage", "demo", Paths.sample("v1-good"), "--version", "v1", "--activate")
        let agent = try harness.agent()
        #expect(agent.content.quarantined.isEmpty)
        #expect(!harness.log.all.contains { $0.contains("event=preflight-failed") })
        if privateTmp {
            #expect(staged.status == 0, "\(staged.error)")
            #expect(agent.content.active == "v1")
        } else {
            #expect(staged.status != 0 && staged.error.contains("could not run") && staged.error.contains("cannot reach"), "\(staged.error)")
            #expect(agent.content.active == nil)
        }
    }

    @Test("A version whose agent raises SIGSEGV itself fails its preflight as crashed: the agent is not PID 1 of the preflight's namespace, whose self-sent signals the kernel would ignore")
    func selfSignalledCrashIsCaught() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let control = try scratch.makeDirectory("v0", files: ["agent.sh": "exec sleep 600\n"])
        let content = try scratch.makeDirectory("v1", files: ["agent.sh": "sleep 0.3\nkill -SEGV $$\nexec sleep 600\n"])
        let harness = try DaemonHarness(agents: ["""
            name = "script"
            exec = ["/bin/sh", "{content}/agent.sh"]
            preflight_sec = 2
            [agent.sandbox]
            private_network = true
            """])
        defer { harness.cleanUp() }
        try harness.start()
        // A version to compare with: the preflight's control.
        try harness.stage(control, as: "v0", agent: "script")
        let staged = try harness.ctl("stage", "script", content, "--version", "v1", "--activate")
        #expect(staged.status != 0 && staged.error.contains("failed preflight (signal SIGSEGV)"), "\(staged.error)")
        let failed = try #require(harness.log.all.first { $0.contains("event=preflight-failed") })
        #expect(failed.contains("reason=crashed") && failed.contains("the control, content v0, passed"), "\(failed)")
        let agent = try harness.agent("script")
        #expect(agent.content.quarantined == ["v1"] && agent.content.active == "v0")
    }

    @Test("A preflight instance outlives a backstopd killed during its preflight; the next backstopd kills it, says it was a preflight, and the version stays staged")
    func preflightLeftoverAfterDaemonCrash() throws {
        let underWay = try PreflightUnderWay()
        defer { underWay.cleanUp() }
        let harness = underWay.harness
        harness.killDaemon()
        #expect(!underWay.instance.isEmpty, "the instance outlives the killed daemon (its user change drops bwrap's death signal)")

        try harness.start()
        try harness.log.wait(for: "Killing a preflight instance of agent script", seconds: 10)
        #expect(underWay.instance.isEmpty)
        let agent = try harness.agent("script")
        #expect(agent.content.active == nil && agent.content.quarantined.isEmpty, "neither activated nor blamed")
        #expect(try harness.ctl("content", "list", "script", "--json").output.contains("\"v2\""), "v2 stays staged")
    }

    @Test("A preflight instance killed from outside (SIGTERM) is a preflight that could not run, as a live agent's is killed-externally: nothing is quarantined")
    func preflightKilledFromOutside() throws {
        let underWay = try PreflightUnderWay()
        defer { underWay.cleanUp() }
        // The agent: its shell, or the sleep it has exec'd by now (the log line comes just before the exec).
        let agent = try #require(underWay.instance.first {
            ["sh\n", "sleep\n"].contains((try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8)) ?? "")
        })
        #expect(kill(agent, SIGTERM) == 0)
        let (status, message) = underWay.requestResult()
        #expect(status != 0 && message.contains("could not run") && message.contains("killed from outside"), "\(message)")
        let content = try underWay.harness.agent("script").content
        #expect(content.quarantined.isEmpty && content.active == nil)
        #expect(!underWay.harness.log.all.contains { $0.contains("event=preflight-failed") })
    }

    @Test("Stopping backstopd during a preflight ends the preflight instance too; the version stays staged")
    func stopDuringPreflight() throws {
        let underWay = try PreflightUnderWay()
        defer { underWay.cleanUp() }
        let harness = underWay.harness
        harness.stop()
        #expect(harness.log.all.contains { $0.contains("Stopped.") }, "backstopd stopped by itself")
        #expect(underWay.instance.isEmpty, "no preflight process outlives the daemon")
        try harness.start()
        #expect(!harness.log.all.contains { $0.contains("left running by a previous backstopd") })
        let agent = try harness.agent("script")
        #expect(agent.content.active == nil && agent.content.quarantined.isEmpty, "neither activated nor blamed")
    }

    @Test("A preflight runs while the agent's user already has tasks_max processes (the live agent): its PID 1 forks before it takes the limits")
    func preflightAtTheTaskLimit() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let v1 = try scratch.makeDirectory("v1", files: ["agent.sh": "exec sleep 600\n"])
        let v2 = try scratch.makeDirectory("v2", files: ["agent.sh": "echo v2 is running\nexec sleep 601\n"])
        let harness = try DaemonHarness(agents: ["""
            name = "script"
            exec = ["/bin/sh", "{content}/agent.sh"]
            preflight_sec = 1
            [agent.sandbox]
            tasks_max = 1
            """])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(v1, as: "v1", agent: "script")
        #expect(try harness.agent("script").pid != nil)
        let staged = try harness.ctl("stage", "script", v2, "--version", "v2", "--activate")
        #expect(staged.status == 0, "\(staged.error)")
        // Its stdout is the daemon's here (no journald): the instance ran the agent before it passed.
        let lines = harness.log.all
        let ran = lines.firstIndex { $0.contains("v2 is running") }
        let passed = lines.firstIndex { $0.contains("Content v2 of agent script passed preflight") }
        #expect(ran != nil && passed != nil && ran! < passed!, "\(lines)")
        #expect(try harness.agent("script").content.active == "v2")
    }

    @Test("With content_link the preflight instance reads the candidate through the link, never the live version: a first good version (no link yet) passes, a bad one behind a good live version fails")
    func preflightSeesCandidateThroughContentLink() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let link = scratch.path + "/rules"
        // The agent reads its content only through the link, as fail2ban reads /etc/fail2ban.
        let script = "[ \"$(cat \(link)/mode)\" = good ] || exit 3\nexec sleep 600\n"
        let good = try scratch.makeDirectory("good", files: ["agent.sh": script, "mode": "good\n"])
        let good2 = try scratch.makeDirectory("good2", files: ["agent.sh": script, "mode": "good\n", "second": ""])
        let bad = try scratch.makeDirectory("bad", files: ["agent.sh": script, "mode": "bad\n"])
        let harness = try DaemonHarness(agents: ["""
            name = "script"
            exec = ["/bin/sh", "{content}/agent.sh"]
            content_link = "\(link)"
            preflight_sec = 2
            [agent.sandbox]
            private_tmp = false
            """])
        defer { harness.cleanUp() }
        let versions = harness.directory + "/state/script/versions/"
        try harness.start()
        try harness.stage(good, as: "v1", agent: "script")
        #expect(harness.log.all.contains { $0.contains("Content v1 of agent script passed preflight") })
        try harness.wait(for: "agent-ready")
        let live = try #require(try harness.agent("script").pid)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == versions + "v1")
        let refused = try harness.ctl("stage", "script", bad, "--version", "v2", "--activate")
        #expect(refused.status != 0 && refused.error.contains("failed preflight (exit code 3)"), "\(refused.error)")
        var agent = try harness.agent("script")
        #expect(agent.pid == live && agent.content.active == "v1" && agent.content.quarantined == ["v2"])
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == versions + "v1", "the live link was never switched")
        #expect(try String(contentsOfFile: versions + "v1/mode", encoding: .utf8) == "good\n", "the live version is untouched")
        let passed = try harness.ctl("stage", "script", good2, "--version", "v3", "--activate")
        #expect(passed.status == 0, "\(passed.error)")
        try harness.wait(for: "agent-ready", count: 2)
        agent = try harness.agent("script")
        #expect(agent.content.active == "v3" && agent.content.quarantined == ["v2"])
    }

    @Test("A good version passes its preflight and goes live")
    func goodVersionGoesLive() throws {
        let harness = try harnessOnKnownGood(preflightSeconds: 3)
        defer { harness.cleanUp() }
        try harness.stage(Paths.sample("v3-good"), as: "v3")
        #expect(harness.log.all.contains { $0.contains("Content v3 of agent demo passed preflight") })
        try harness.wait(for: "agent-ready", count: 2)
        let agent = try harness.agent()
        #expect(agent.content.active == "v3" && agent.content.candidate == "v3")
        #expect(agent.content.quarantined.isEmpty)
        #expect(!harness.log.all.contains { $0.contains("event=preflight-failed") })
    }

    @Test("A version that crashes only after preflight_sec passes preflight and is still caught by the crash-loop rollback")
    func lateCrashCaughtByRollback() throws {
        // crash-after crashes 5 s after start; the preflight lasts 2 s.
        let harness = try harnessOnKnownGood(preflightSeconds: 2)
        defer { harness.cleanUp() }
        try harness.stage(Paths.sample("crash-after"), as: "v2")
        #expect(harness.log.all.contains { $0.contains("Content v2 of agent demo passed preflight") })
        try harness.wait(for: "rollback", seconds: 60)
        let agent = try harness.agent()
        #expect(agent.content.active == "v1")
        #expect(agent.content.quarantined == ["v2"])
        #expect(agent.lastRollback?.reason == "crash-loop")
    }
}

/// A `stage --activate` whose preflight is under way: agent `script` (a shell that says
/// "instance is up", then sleeps) with `preflight_sec = 60`, and the request, which waits
/// for the preflight, started and not waited for.
final class PreflightUnderWay {
    let scratch: TemporaryDirectory
    let harness: DaemonHarness
    let request = Process()
    private let errors = Pipe()

    init() throws {
        scratch = try TemporaryDirectory()
        let v2: String
        do {
            v2 = try scratch.makeDirectory("v2", files: ["agent.sh": "echo instance is up\nexec sleep 600\n"])
            harness = try DaemonHarness(agents: ["""
                name = "script"
                exec = ["/bin/sh", "{content}/agent.sh"]
                preflight_sec = 60
                [agent.sandbox]
                private_network = true
                """])
        } catch {
            scratch.remove()
            throw error
        }
        do {
            try harness.start()
            request.executableURL = URL(fileURLWithPath: Paths.binary("backstopctl"))
            request.arguments = ["stage", "script", v2, "--version", "v2", "--activate", "--config", harness.configPath]
            request.standardOutput = FileHandle.nullDevice
            request.standardError = errors
            try request.run()
            // Its stdout is the daemon's here (no journald).
            try harness.log.wait(for: "instance is up", seconds: 20)
        } catch {
            cleanUp()
            throw error
        }
    }

    /// The processes of the preflight instance (its mark in their environment).
    var instance: [Int32] {
        ProcessTable.processes(withEnvironment: LaunchRequest.preflightStoreVariable, value: harness.directory + "/state/script")
    }

    /// The request's exit code and what it said on stderr, once it has ended.
    func requestResult() -> (status: Int32, error: String) {
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        request.waitUntilExit()
        return (request.terminationStatus, text)
    }

    /// Stops the daemon (which ends the request) and removes everything.
    func cleanUp() {
        harness.cleanUp()
        if request.isRunning { request.waitUntilExit() }
        scratch.remove()
    }
}
