@testable import BackstopCore
import Foundation
import Testing

/// What reaches a real systemd-journald: `make demo`'s scenario runs next to a journald
/// of its own (scripts/with-private-journald.sh, a private mount namespace), and the
/// journal is read back with journalctl and with `backstopctl history`.
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled(if: Environment.isRoot, "needs root: a private mount namespace with its own journald"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/lib/systemd/systemd-journald"),
             "needs /lib/systemd/systemd-journald (Debian's systemd package)"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct JournalTests {
    /// The scenario's outputs, read once.
    struct Outputs {
        let directory: String
        func text(_ name: String) -> String {
            (try? String(contentsOfFile: directory + "/" + name, encoding: .utf8)) ?? ""
        }
        /// One JSON object per line (journalctl -o json, history --json).
        func objects(_ name: String) -> [[String: Any]] {
            text(name).split(separator: "\n").compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
            }
        }
    }

    static let expectedEvents = [
        "content-staged", "content-activated", "agent-started", "agent-ready", "content-promoted",
        "content-staged", "content-activated", "agent-exited", "agent-started",
        "agent-exited", "agent-started", "agent-exited", "agent-started", "agent-exited",
        "crash-loop", "content-quarantined", "rollback", "agent-started", "agent-ready", "agent-exited",
    ]

    /// Runs the demo under a private journald and collects what the journal holds.
    func runScenario() throws -> (Outputs, TemporaryDirectory) {
        let scratch = try TemporaryDirectory()
        let out = scratch.path
        let ctl = Paths.binary("backstopctl")
        let rollbackID = EventKind.rollback.messageID
        let scenario = """
            set -eu
            "\(Paths.repository)/scripts/demo.sh" "\(Paths.binaries)" > "\(out)/demo.txt" 2>&1
            journalctl --sync
            journalctl -D /run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=backstopd > "\(out)/journal.json"
            journalctl -D /run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=demo > "\(out)/agent.json"
            journalctl -D /run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=demo-ready-check > "\(out)/ready-check.json"
            journalctl -D /run/log/journal -x --no-pager MESSAGE_ID=\(rollbackID) > "\(out)/explained.txt"
            journalctl --list-catalog > "\(out)/catalog.txt"
            "\(ctl)" history -D /run/log/journal > "\(out)/history.txt"
            "\(ctl)" history -D /run/log/journal --json demo > "\(out)/history.json"
            "\(ctl)" history -D /run/log/journal -n 3 > "\(out)/history-tail.txt"
            "\(ctl)" history -D /run/log/journal --boot > "\(out)/history-boot.txt"
            """
        try scenario.write(toFile: out + "/scenario.sh", atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Paths.repository + "/scripts/with-private-journald.sh")
        process.arguments = ["--catalog", Paths.repository + "/systemd/backstop.catalog", "--", "bash", out + "/scenario.sh"]
        // A file, not a pipe: a stray grandchild holding a pipe open would block the read.
        _ = FileManager.default.createFile(atPath: out + "/run.log", contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: out + "/run.log"))
        process.standardOutput = log
        process.standardError = log
        try process.run()
        process.waitUntilExit()
        try log.close()
        let output = (try? String(contentsOfFile: out + "/run.log", encoding: .utf8)) ?? ""
        guard process.terminationStatus == 0 else {
            scratch.remove()
            throw HarnessError.failed("the journal scenario failed: \(output)\n\((try? String(contentsOfFile: out + "/demo.txt", encoding: .utf8)) ?? "")")
        }
        return (Outputs(directory: out), scratch)
    }

    @Test("The demo's story is in the journal: every decision, in order, with its fields, catalog text and history")
    func demoStoryInTheJournal() throws {
        let (outputs, scratch) = try runScenario()
        defer { scratch.remove() }

        let entries = outputs.objects("journal.json")
        let decisions = entries.filter { $0["BACKSTOP_EVENT"] != nil }
        #expect(decisions.map { $0["BACKSTOP_EVENT"] as? String ?? "" } == Self.expectedEvents)

        // Every decision carries the contract's fields.
        for decision in decisions {
            let event = try #require(EventKind(rawValue: decision["BACKSTOP_EVENT"] as? String ?? ""))
            #expect(decision["MESSAGE_ID"] as? String == event.messageID)
            #expect(decision["SYSLOG_IDENTIFIER"] as? String == "backstopd")
            #expect(decision["BACKSTOP_AGENT"] as? String == "demo")
            #expect(decision["BACKSTOP_CONTENT_VERSION"] != nil)
            #expect((decision["MESSAGE"] as? String)?.isEmpty == false)
        }
        let rollback = try #require(decisions.first { $0["BACKSTOP_EVENT"] as? String == "rollback" })
        #expect(rollback["PRIORITY"] as? String == "4")
        #expect(rollback["BACKSTOP_CONTENT_VERSION"] as? String == "v1")
        #expect(rollback["BACKSTOP_PREVIOUS_VERSION"] as? String == "v2")
        #expect(rollback["BACKSTOP_REASON"] as? String == "crash-loop")
        #expect(rollback["MESSAGE"] as? String == "Rolled agent demo back from content v2 to known-good v1 (crash-loop).")
        let crashes = decisions.filter { $0["BACKSTOP_EVENT"] as? String == "agent-exited" && $0["BACKSTOP_REASON"] != nil }
        #expect(crashes.map { $0["BACKSTOP_SIGNAL"] as? String } == ["SIGSEGV", "SIGSEGV", "SIGSEGV"])
        #expect(crashes.map { $0["BACKSTOP_FAILURES"] as? String } == ["1", "2", "3"])
        let priorities = Dictionary(decisions.map { ($0["BACKSTOP_EVENT"] as? String ?? "", $0["PRIORITY"] as? String ?? "") }) { first, _ in first }
        #expect(priorities["crash-loop"] == "3")
        #expect(priorities["content-quarantined"] == "4")
        #expect(priorities["content-promoted"] == "5")

        // The daemon's own log lines are structured too, and never claim a UNIT.
        let running = try #require(entries.first { ($0["MESSAGE"] as? String)?.contains("is running") == true })
        #expect(running["BACKSTOP_AGENTS"] as? String == "demo")
        #expect(running["CODE_FUNC"] != nil)
        #expect(!entries.contains { $0["UNIT"] != nil })

        // The agent's own output, under its own identifier.
        let agentLines = outputs.objects("agent.json").compactMap { $0["MESSAGE"] as? String }
        #expect(agentLines.contains { $0.hasPrefix("backstop-demo-agent: loaded content v1") })
        #expect(agentLines.contains { $0.hasPrefix("backstop-demo-agent: loaded content v2") })
        // Its ready check's stderr, under the check's identifier, not the agent's.
        let checkLines = outputs.objects("ready-check.json").compactMap { $0["MESSAGE"] as? String }
        #expect(checkLines.contains("ready check: content v1 is readable"), "\(checkLines)")
        #expect(!agentLines.contains { $0.hasPrefix("ready check:") }, "\(agentLines)")

        // journalctl -x explains the rollback with the catalog's text.
        #expect(outputs.text("explained.txt").contains("Agent demo was rolled back to v1"))
        #expect(outputs.text("explained.txt").contains("backstopctl reset-failed demo"))

        // backstopctl history tells the same story.
        let history = outputs.text("history.txt").split(separator: "\n")
        #expect(history.map { String($0.split(separator: " ")[1]) } == Self.expectedEvents)
        #expect(outputs.objects("history.json").map { $0["BACKSTOP_EVENT"] as? String ?? "" } == Self.expectedEvents)
        #expect(outputs.objects("history.json").first { $0["BACKSTOP_EVENT"] as? String == "rollback" }?["BACKSTOP_REASON"] as? String == "crash-loop")
        #expect(outputs.text("history-tail.txt").split(separator: "\n").map { String($0.split(separator: " ")[1]) }
            == Array(Self.expectedEvents.suffix(3)))
        #expect(outputs.text("history-boot.txt") == outputs.text("history.txt"))
    }

    @Test("Every MESSAGE_ID the daemon can emit has a catalog entry that journalctl accepts")
    func catalogCoversEveryEvent() throws {
        let catalog = try String(contentsOfFile: Paths.repository + "/systemd/backstop.catalog", encoding: .utf8)
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let root = scratch.path
        try FileManager.default.createDirectory(atPath: root + "/usr/lib/systemd/catalog", withIntermediateDirectories: true)
        try catalog.write(toFile: root + "/usr/lib/systemd/catalog/backstop.catalog", atomically: true, encoding: .utf8)
        for arguments in [["--root", root, "--update-catalog"], ["--root", root, "--list-catalog"]] {
            let result = try Command.run("/usr/bin/journalctl", arguments)
            #expect(result.status == 0, "journalctl \(arguments.joined(separator: " ")): \(result.error)")
            if arguments.contains("--list-catalog") {
                for event in EventKind.allCases {
                    #expect(result.output.contains(event.messageID), "no catalog entry for \(event.rawValue)")
                }
            }
        }
    }
}
