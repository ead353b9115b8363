import Foundation
import Testing
@testable import BackstopCore

/// A `content_link` that backstopd cannot make: a setup failure, never the content's.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: it bind-mounts a directory read-only, and staging is root's"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct ContentLinkTests {
    /// A daemon with agent `script`: `{content}/agent.sh` run by sh, its content at `link`.
    static func scriptHarness(link: String) throws -> DaemonHarness {
        try DaemonHarness(agents: ["""
            name = "script"
            exec = ["/bin/sh", "{content}/agent.sh"]
            content_link = "\(link)"
            restart_delay_ms = 50
            [agent.sandbox]
            private_tmp = false
            """])
    }

    /// `directory` bind-mounted read-only over itself (as /etc under `ProtectSystem=full`), until ``remove()``.
    final class ReadOnlyBind {
        let directory: String
        private var mounted = false

        /// - Throws: when mount(8) fails.
        init(_ directory: String) throws {
            self.directory = directory
            try #require(try Command.run("/bin/mount", ["--bind", directory, directory]).status == 0)
            mounted = true
            guard try Command.run("/bin/mount", ["-o", "remount,bind,ro", directory, directory]).status == 0 else {
                try remove()
                throw HarnessError.failed("cannot make \(directory) read-only")
            }
        }

        /// Unmounts it (again: a no-op); the directory is writable again.
        /// - Throws: when umount(8) fails.
        func remove() throws {
            guard mounted else { return }
            try #require(try Command.run("/bin/umount", [directory]).status == 0)
            mounted = false
        }
    }

    @Test("A content_link in a read-only directory (as /etc under a unit's ProtectSystem=full): --check-config says so, the agent is not started on missing content (exec-failed) and the version is not quarantined; once the directory is writable the next start makes the link")
    func unwritableLinkIsSetupFailure() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let directory = try scratch.makeDirectory("etc", files: [:])
        let link = directory + "/rules"
        let script = "[ \"$(cat \(link)/mode)\" = good ] || exit 3\nexec sleep 600\n"
        let good = try scratch.makeDirectory("good", files: ["agent.sh": script, "mode": "good\n"])
        let harness = try Self.scriptHarness(link: link)
        defer { harness.cleanUp() }
        let readOnly = try ReadOnlyBind(directory)
        defer { try? readOnly.remove() }

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
        try readOnly.remove()
        try harness.wait(for: "agent-ready")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == harness.directory + "/state/script/versions/v1")
        #expect(try harness.agent("script").content.quarantined.isEmpty)
    }

    @Test("A directory at content_link that cannot be set aside (on a read-only mount): the exit names the rename that failed and why, not only the swap; once it can, the directory is kept beside the link as .unexpected-<time>")
    func directoryThatCannotBeSetAside() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let directory = try scratch.makeDirectory("var-lib", files: [:])
        let link = directory + "/rules"
        try FileManager.default.createDirectory(atPath: link, withIntermediateDirectories: false)
        try "the operator's own\n".write(toFile: link + "/old.rules", atomically: true, encoding: .utf8)
        let good = try scratch.makeDirectory("good", files: ["agent.sh": "exec sleep 600\n"])
        let harness = try Self.scriptHarness(link: link)
        defer { harness.cleanUp() }
        let readOnly = try ReadOnlyBind(directory)
        defer { try? readOnly.remove() }

        try harness.start()
        try harness.stage(good, as: "v1", agent: "script")
        try harness.wait(for: "agent-exited")
        let exited = try #require(harness.log.all.first { $0.contains("event=agent-exited") })
        #expect(exited.contains("reason=exec-failed") && exited.contains("set aside (rename to \(link).unexpected-")
                    && exited.contains("Read-only file system") && exited.contains("content_link"), "\(exited)")
        #expect(try harness.agent("script").content.quarantined.isEmpty, "the content is not blamed")

        try readOnly.remove()
        try harness.wait(for: "agent-ready")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == harness.directory + "/state/script/versions/v1")
        let aside = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix("rules.unexpected-") }
        #expect(aside.count == 1, "\(aside)")
        #expect(try String(contentsOfFile: directory + "/" + (aside.first ?? "-") + "/old.rules", encoding: .utf8) == "the operator's own\n")
    }
}
