import BackstopCore
import Foundation
import Testing

/// Damage done behind the daemon's back: edited content, a garbled state file, a second daemon.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct TamperTests {
    func harnessWithKnownGood() throws -> DaemonHarness {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        do {
            try harness.start()
            try harness.stage(Paths.sample("v1-good"), as: "v1")
            try harness.wait(for: "agent-ready")
            #expect(try harness.ctl("promote", "demo", "v1").status == 0)
        } catch {
            harness.cleanUp()
            throw error
        }
        return harness
    }

    /// ``harnessWithKnownGood()`` after a crash loop on `v2`: quarantined, rolled back to
    /// `v1`, and the daemon stopped.
    func harnessWithQuarantinedCandidate() throws -> DaemonHarness {
        let harness = try harnessWithKnownGood()
        do {
            try harness.stage(Paths.sample("v2-channel-291"), as: "v2")
            try harness.wait(for: "rollback", seconds: 60)
            try harness.wait(for: "agent-ready", after: "rollback")
            harness.stop()
        } catch {
            harness.cleanUp()
            throw error
        }
        return harness
    }

    @Test("A known-good version edited on disk is not rolled back to: it is quarantined too")
    func tamperedKnownGoodIsNotRun() throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        let file = harness.directory + "/state/demo/versions/v1/channel-100.conf"
        chmod(file, 0o644)
        let handle = try #require(FileHandle(forWritingAtPath: file))
        handle.seekToEndOfFile()
        handle.write(Data("instance file_write tampered,1,2,3,4,5,6,7\n".utf8))
        try handle.close()

        try harness.stage(Paths.sample("v2-channel-291"), as: "v2")
        try harness.wait(for: "gave-up", seconds: 60)
        #expect(harness.log.all.contains { $0.contains("event=content-quarantined") && $0.contains("reason=verification-failed") && $0.contains("version=v1") })
        let agent = try harness.agent()
        #expect(agent.state == "given-up")
        #expect(agent.content.active == nil)
        #expect(Set(agent.content.quarantined) == ["v1", "v2"])
        #expect(agent.lastRollback == nil, "the rollback to v1 never happened")
        let startsOnV1AfterRollback = harness.log.all.drop { !$0.contains("event=crash-loop") }
            .filter { $0.contains("event=agent-started") && $0.contains("version=v1") }
        #expect(startsOnV1AfterRollback.isEmpty, "the tampered version was never started")
    }

    @Test("A garbled state file falls back to its previous generation: quarantine and known-good are remembered")
    func garbledStateFile() throws {
        let harness = try harnessWithQuarantinedCandidate()
        defer { harness.cleanUp() }
        try Data("{\"schema\":1,".utf8).write(to: URL(fileURLWithPath: harness.directory + "/state/demo/state.json"))

        try harness.start()
        try harness.log.wait(for: "using its previous generation", seconds: 10)
        try harness.wait(for: "agent-ready")
        let agent = try harness.agent()
        #expect(agent.content.active == "v1")
        #expect(agent.content.knownGood == "v1")
        #expect(agent.content.quarantined == ["v2"])
        #expect(try harness.ctl("activate", "demo", "v2").status == 1, "v2 stays quarantined")
        let aside = try FileManager.default.contentsOfDirectory(atPath: harness.directory + "/state/demo")
            .filter { $0.hasPrefix("state.json.corrupt-") }
        #expect(aside.count == 1, "the garbled file is kept for inspection")
    }

    @Test(
        "Both state files corrupt, truncated, empty or of another schema: set aside, rebuilt from the store with nothing known-good, logged as critical",
        arguments: ["corrupt", "truncated", "empty", "schema 2"])
    func unreadableStateFiles(_ damage: String) throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        harness.stop()
        let agentDirectory = harness.directory + "/state/demo"
        for name in ["state.json", "state.json.prev"] {
            let path = agentDirectory + "/" + name
            let original = try Data(contentsOf: URL(fileURLWithPath: path))
            let damaged: Data
            switch damage {
            case "corrupt": damaged = Data((0..<200).map { UInt8(truncatingIfNeeded: $0 &* 37) })
            case "truncated": damaged = original.prefix(original.count / 2)
            case "empty": damaged = Data()
            default: damaged = Data(String(decoding: original, as: UTF8.self).replacingOccurrences(of: "\"schema\":1", with: "\"schema\":2").utf8)
            }
            try damaged.write(to: URL(fileURLWithPath: path))
        }

        try harness.start()
        try harness.wait(for: "agent-ready")
        #expect(harness.log.all.contains { $0.contains(" critical ") && $0.contains("lost or unreadable (both generations)") })
        let agent = try harness.agent()
        #expect(agent.content.active == "v1")
        #expect(agent.content.knownGood == nil, "an unverified standing is not known-good")
        #expect(agent.content.candidate == "v1")
        let names = try FileManager.default.contentsOfDirectory(atPath: agentDirectory)
        #expect(names.filter { $0.hasPrefix("state.json.corrupt-") }.count == 1)
        #expect(names.filter { $0.hasPrefix("state.json.prev.corrupt-") }.count == 1)
        #expect(try AgentStateFile.load(path: agentDirectory + "/state.json") != nil, "a new state file is written")
    }

    @Test("A state file with readings no daemon could have written is set aside like a corrupt one, and status works offline", arguments: [
        ("restartDueMonotonicSeconds", "1e300"), ("probationBankedSeconds", "-1e300"), ("consecutiveFailures", "-5"),
    ])
    func implausibleState(_ key: String, _ value: String) throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        harness.stop()
        let path = harness.directory + "/state/demo/state.json"
        var state = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        state[key] = Double(value)!
        try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path))
        let offline = try harness.ctl("status")
        #expect(offline.status == 3, "\(offline)")

        try harness.start()
        try harness.log.wait(for: "using its previous generation", seconds: 10)
        try harness.wait(for: "agent-ready")
        #expect(try harness.agent().content.knownGood == "v1")
        #expect(try FileManager.default.contentsOfDirectory(atPath: harness.directory + "/state/demo").contains { $0.hasPrefix("state.json.corrupt-") })
    }

    @Test("An agent run as root directly sees its content, the state and the store read-only, and keeps the pid backstopd started")
    func agentSeesStoreReadOnly() throws {
        let directory = NSTemporaryDirectory() + "backstop-ro-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let script = """
            for f in "$BACKSTOP_CONTENT/channel-100.conf" "$BACKSTOP_STORE/state.json" "$BACKSTOP_STORE/versions/new"; do
                if echo tampered >> "$f" 2>/dev/null; then echo "wrote $f"; else echo "refused $f"; fi
            done > \(directory)/writes
            echo $$ > \(directory)/pid
            exec sleep 600
            """
        let harness = try DaemonHarness(agents: ["name = \"shell\"\nexec = [\"/bin/sh\", \"-c\", \(String(reflecting: script))]"])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1", agent: "shell")
        try harness.wait(for: "agent-ready")
        let writes = try String(contentsOfFile: directory + "/writes", encoding: .utf8)
        #expect(writes.split(separator: "\n").count == 3 && writes.split(separator: "\n").allSatisfy { $0.hasPrefix("refused ") }, "\(writes)")
        let pid = try String(contentsOfFile: directory + "/pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try harness.agent("shell").pid.map(String.init) == pid, "the agent keeps the pid backstopd started")
        let content = try String(contentsOfFile: harness.directory + "/state/shell/versions/v1/channel-100.conf", encoding: .utf8)
        #expect(!content.contains("tampered"))
    }

    @Test("A program the kernel will not execute (a broken ELF file, a missing #! interpreter) is exec-failed in the sandbox, never the content's fault",
          arguments: ["\u{7F}ELFgarbage\n", "#!/nonexistent/interpreter\n"])
    func unexecutableProgram(_ contents: String) throws {
        let directory = NSTemporaryDirectory() + "backstop-exec-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let program = directory + "/agent"
        try Data(contents.utf8).write(to: URL(fileURLWithPath: program))
        #expect(chmod(program, 0o755) == 0)
        let harness = try DaemonHarness(agents: ["name = \"broken\"\nexec = [\"\(program)\"]\nfailure_threshold = 1"])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1", agent: "broken")
        try harness.log.wait(for: "reason=exec-failed", count: 2, seconds: 20)
        let agent = try harness.agent("broken")
        #expect(agent.content.active == "v1")
        #expect(agent.content.quarantined.isEmpty)
        #expect(agent.failures.list.allSatisfy { $0.reason == "exec-failed" && $0.attribution == "configuration" })
        #expect(harness.log.all.contains { $0.contains("could not be executed in its sandbox") })
    }

    @Test("Both state files lost: no version is deleted; the versions are adopted and the active one runs again")
    func lostStateFiles() throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        try harness.stage(Paths.sample("v3-good"), as: "v3", activate: false)
        harness.stop()
        let agentDirectory = harness.directory + "/state/demo"
        try FileManager.default.removeItem(atPath: agentDirectory + "/state.json")
        try FileManager.default.removeItem(atPath: agentDirectory + "/state.json.prev")

        try harness.start()
        try harness.wait(for: "agent-ready")
        let agent = try harness.agent()
        #expect(agent.content.active == "v1")
        #expect(agent.content.candidate == "v1", "its standing was in the lost files: probation again")
        #expect(try FileManager.default.contentsOfDirectory(atPath: agentDirectory + "/versions").sorted() == ["v1", "v3"])
        let listing = try harness.ctl("content", "list", "demo")
        #expect(listing.output.contains("v3"))
    }

    @Test("A state file whose active version points outside the store is repaired to the known-good version")
    func activeOutsideTheStore() throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        harness.stop()
        let path = harness.directory + "/state/demo/state.json"
        var state = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        var ledger = try #require(state["ledger"] as? [String: Any])
        ledger["active"] = "../../../etc"
        state["ledger"] = ledger
        try JSONSerialization.data(withJSONObject: state).write(to: URL(fileURLWithPath: path))

        try harness.start()
        try harness.wait(for: "agent-ready")
        #expect(harness.log.all.contains { $0.contains("was inconsistent and has been repaired") })
        #expect(!harness.log.all.contains { $0.contains("etc") && $0.contains("event=agent-started") })
        let agent = try harness.agent()
        #expect(agent.content.active == "v1")
        #expect(agent.state == "running")
    }

    @Test("A rollback to a version whose files changed is refused, and the running agent is left alone")
    func rollbackToTamperedVersionRefused() throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        try harness.stage(Paths.sample("v3-good"), as: "v3")
        try harness.wait(for: "agent-ready", after: "content-activated")
        #expect(try harness.ctl("promote", "demo", "v3").status == 0)
        let file = harness.directory + "/state/demo/versions/v1/templates.conf"
        chmod(file, 0o644)
        try "template tampered fields=1\n".write(toFile: file, atomically: false, encoding: .utf8)
        let pid = try harness.agent().pid
        let refused = try harness.ctl("rollback", "demo", "--to", "v1")
        #expect(refused.status == 1)
        #expect(refused.error.contains("does not match its recorded digest"))
        let agent = try harness.agent()
        #expect(agent.content.active == "v3")
        #expect(agent.pid == pid, "the healthy agent was not restarted")
    }

    @Test("A symlink where staging/ should be is refused: the agent is not started, status says why, and the files it leads to survive startup")
    func symlinkedStagingRefused() throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        harness.stop()
        let elsewhere = harness.directory + "/elsewhere"
        try FileManager.default.createDirectory(atPath: elsewhere + "/keep", withIntermediateDirectories: true)
        try Data("precious\n".utf8).write(to: URL(fileURLWithPath: elsewhere + "/keep/file"))
        let staging = harness.directory + "/state/demo/staging"
        try FileManager.default.removeItem(atPath: staging)
        #expect(symlink(elsewhere, staging) == 0)

        try harness.start()
        try harness.log.wait(for: "content store is refused", seconds: 10)
        let (report, exitCode) = try harness.status()
        let agent = try #require(report.agents.first)
        #expect(exitCode == 1, "degraded")
        #expect(agent.state == "stopped" && agent.pid == nil)
        #expect(agent.degradedReason?.contains("\(staging) is a symlink to \(elsewhere)") == true, "\(agent.degradedReason ?? "no reason")")
        let activate = try harness.ctl("activate", "demo", "v1")
        #expect(activate.status != 0 && activate.error.contains("is a symlink to \(elsewhere)"), "\(activate.error)")
        harness.stop()
        #expect(FileManager.default.fileExists(atPath: elsewhere + "/keep/file"), "startup cleanup never follows the symlink")
        #expect(!harness.log.all.contains { $0.contains("event=agent-started") }, "the agent is not started on a store it cannot trust")
    }

    @Test("A state directory that is a symlink is refused: backstopd does not start, and says why")
    func symlinkedStateDirectoryRefused() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        let real = harness.directory + "/real-state"
        try FileManager.default.createDirectory(atPath: real, withIntermediateDirectories: true)
        #expect(symlink(real, harness.directory + "/state") == 0)
        try harness.start(waitUntilRunning: false)
        try harness.log.wait(for: "backstopd: \(harness.directory)/state is a symlink to \(real), where Backstop keeps a directory of its own", seconds: 20)
        #expect(harness.waitForExit(seconds: 20), "backstopd exits")
        #expect(harness.process?.terminationStatus != 0)
        #expect(harness.log.all.contains { $0.contains("critical") && $0.contains("the state directory is refused") }, "and says so in the journal")
        #expect(try FileManager.default.contentsOfDirectory(atPath: real).isEmpty, "nothing was made through it")
    }

    @Test("Both state files lost: a quarantined version stays quarantined (its mark is beside the versions): activate is refused, a restart with the active link on it does not run it, and a garbled mark still quarantines the version it names")
    func quarantineOutlivesStateFiles() throws {
        let harness = try harnessWithQuarantinedCandidate()
        defer { harness.cleanUp() }
        let agentDirectory = harness.directory + "/state/demo"
        func loseStateFiles() throws {
            try FileManager.default.removeItem(atPath: agentDirectory + "/state.json")
            // A store rebuilt since the last loss may have saved one generation only.
            #expect(unlink(agentDirectory + "/state.json.prev") == 0 || errno == ENOENT)
        }
        try loseStateFiles()

        try harness.start()
        try harness.log.wait(for: "they are quarantined again", seconds: 10)
        try harness.wait(for: "agent-ready")
        var agent = try harness.agent()
        #expect(agent.content.active == "v1")
        #expect(agent.content.quarantined == ["v2"])
        let activate = try harness.ctl("activate", "demo", "v2")
        #expect(activate.status == 1 && activate.error.contains("quarantined"), "\(activate.error)")

        // A crash that left the active link on v2, and the state files lost again.
        harness.stop()
        try loseStateFiles()
        #expect(unlink(agentDirectory + "/active") == 0 && symlink("versions/v2", agentDirectory + "/active") == 0)
        try harness.start()
        try harness.log.wait(for: "they are quarantined again", seconds: 10)
        agent = try harness.agent()
        #expect(agent.content.active != "v2")
        #expect(agent.content.quarantined == ["v2"])
        #expect(!harness.log.all.contains { $0.contains("event=agent-started") && $0.contains("version=v2") }, "v2 never runs again")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: agentDirectory + "/active")) != "versions/v2")

        // The state files lost and the mark garbled (or empty): the mark's name still says v2.
        for garbage in ["{garbage", ""] {
            harness.stop()
            try loseStateFiles()
            try Data(garbage.utf8).write(to: URL(fileURLWithPath: agentDirectory + "/quarantine/v2.json"))
            try harness.start()
            try harness.log.wait(for: "the versions they name stay quarantined", seconds: 10)
            agent = try harness.agent()
            #expect(agent.content.quarantined == ["v2"], "a garbled mark (\(garbage.isEmpty ? "empty" : garbage)) still quarantines v2")
            let again = try harness.ctl("activate", "demo", "v2")
            #expect(again.status == 1 && again.error.contains("quarantined"), "\(again.error)")
        }
        let rewritten = try Data(contentsOf: URL(fileURLWithPath: agentDirectory + "/quarantine/v2.json"))
        #expect((try? JSONSerialization.jsonObject(with: rewritten)) != nil, "the mark is written anew")
    }

    @Test("A second daemon sharing only the runtime directory refuses to start too")
    func secondDaemonSharingRuntimeDirectory() throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        let other = harness.directory + "/other.toml"
        try """
            [daemon]
            state_directory = "\(harness.directory)/other-state"
            runtime_directory = "\(harness.directory)/run"
            """.write(toFile: other, atomically: true, encoding: .utf8)
        let second = try Command.run(Paths.binary("backstopd"), ["--config", other])
        #expect(second.status != 0)
        #expect((second.output + second.error).contains("another backstopd"))
        #expect(try harness.status().exitCode == 0, "the first daemon's sockets are untouched")
    }

    @Test("A second daemon on the same state directory refuses to start; the first keeps serving")
    func secondDaemonRefused() throws {
        let harness = try harnessWithKnownGood()
        defer { harness.cleanUp() }
        let second = try Command.run(Paths.binary("backstopd"), ["--config", harness.configPath])
        #expect(second.status != 0)
        #expect((second.output + second.error).contains("another backstopd (pid \(harness.process!.processIdentifier))"))
        let (report, exitCode) = try harness.status()
        #expect(exitCode == 0)
        #expect(report.daemon.pid == harness.process!.processIdentifier)
        #expect(report.agents.first?.state == "running")
    }
}
