import Foundation
import Testing
@testable import BackstopCore

/// A `content_link` that backstopd cannot make: a setup failure, never the content's.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: it bind-mounts a directory read-only, and staging is root's"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct ContentLinkTests {
    @Test("A content_link in a read-only directory (as /etc under a unit's ProtectSystem=full): --check-config says so, the agent is not started on missing content (exec-failed) and the version is not quarantined; once the directory is writable the next start makes the link")
    func unwritableLinkIsSetupFailure() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let directory = try scratch.makeDirectory("etc", files: [:])
        let link = directory + "/rules"
        let script = "[ \"$(cat \(link)/mode)\" = good ] || exit 3\nexec sleep 600\n"
        let good = try scratch.makeDirectory("good", files: ["agent.sh": script, "mode": "good\n"])
        let harness = try DaemonHarness(agents: ["""
            name = "script"
            exec = ["/bin/sh", "{content}/agent.sh"]
            content_link = "\(link)"
            restart_delay_ms = 50
            [agent.sandbox]
            private_tmp = false
            """])
        defer { harness.cleanUp() }
        try #require(try Command.run("/bin/mount", ["--bind", directory, directory]).status == 0)
        var mounted = true
        defer { if mounted { _ = try? Command.run("/bin/umount", [directory]) } }
        try #require(try Command.run("/bin/mount", ["-o", "remount,bind,ro", directory, directory]).status == 0)

        let check = try Command.run(Paths.binary("backstopd"), ["--check-config", "--config", harness.configPath])
        #expect(check.status == 0, "\(check.error)")
        #expect((check.output + check.error).contains("content_link \(link) cannot be made: \(directory) is on a read-only mount"),
                "\(check.output)\(check.error)")

        try harness.start()
        try harness.stage(good, as: "v1", agent: "script")
        try harness.wait(for: "agent-exited")
        let exited = try #require(harness.log.all.first { $0.contains("event=agent-exited") })
        #expect(exited.contains("reason=exec-failed") && exited.contains("its content cannot be put in place"), "\(exited)")
        #expect(!harness.log.all.contains { $0.contains("event=agent-started") }, "never started on missing content")
        let agent = try harness.agent("script")
        #expect(agent.content.quarantined.isEmpty && agent.content.candidate == "v1", "the content is not blamed")
        #expect(agent.failures.recent == 0)

        // Made writable again: the next start puts the link in place and runs the agent on v1.
        try #require(try Command.run("/bin/umount", [directory]).status == 0)
        mounted = false
        try harness.wait(for: "agent-ready")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == harness.directory + "/state/script/versions/v1")
        #expect(try harness.agent("script").content.quarantined.isEmpty)
    }
}
