import BackstopCore
import Foundation
import Testing

/// Who may do what on the control socket (SO_PEERCRED): root everything, group
/// `backstop` reading only, anyone else nothing.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: it creates group backstop and runs clients as nobody"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "needs setpriv (util-linux)"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"),
    .enabled(if: Environment.nobodyCanRunBackstopctl, "user nobody cannot execute the built backstopctl (a build tree below a private directory)"))
struct PermissionTests {
    /// Runs the built `binary` with `arguments` on `harness`'s configuration as uid/gid 65534
    /// (nobody), with `groups` as supplementary groups.
    func asNobody(_ binary: String, _ harness: DaemonHarness, groups: [UInt32] = [], _ arguments: [String]) throws -> CommandResult {
        let groupList = groups.isEmpty ? ["--clear-groups"] : ["--groups=" + groups.map(String.init).joined(separator: ",")]
        return try Command.run(
            "/usr/bin/setpriv",
            ["--reuid=65534", "--regid=65534"] + groupList + ["--", Paths.binary(binary)] + arguments + ["--config", harness.configPath])
    }

    /// Runs backstopctl as nobody (``asNobody(_:_:groups:_:)``).
    func ctlAsNobody(_ harness: DaemonHarness, groups: [UInt32], _ arguments: String...) throws -> CommandResult {
        try asNobody("backstopctl", harness, groups: groups, arguments)
    }

    @Test("Group backstop may read but not change; others may do neither; denials are logged")
    func readersAndStrangers() throws {
        let createdGroup = BackstopGroup.id == nil
        if createdGroup { _ = try Command.run("/usr/sbin/groupadd", ["--system", "backstop"]) }
        defer { if createdGroup { _ = try? Command.run("/usr/sbin/groupdel", ["backstop"]) } }
        let group = try #require(BackstopGroup.id)

        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        chmod(harness.directory, 0o755)
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1")
        try harness.wait(for: "agent-ready")

        var info = stat()
        stat(harness.directory + "/run/io.backstop.Manager", &info)
        #expect(info.st_mode & 0o777 == 0o660)
        #expect(info.st_gid == group)

        let reader = try ctlAsNobody(harness, groups: [group], "status", "--json")
        #expect(reader.status == 0, "\(reader.error)")
        #expect(reader.output.contains("\"active\":\"v1\""))
        let writer = try ctlAsNobody(harness, groups: [group], "promote", "demo", "v1")
        #expect(writer.status == 1)
        #expect(writer.error.contains("needs root"))
        // The bundle opened and sent by a reader changes nothing either.
        let stager = try ctlAsNobody(harness, groups: [group], "stage", "demo", Paths.sample("v3-good"), "--version", "v3")
        #expect(stager.status == 1)
        #expect(stager.error.contains("Stage needs root"), "\(stager.error)")
        let stranger = try ctlAsNobody(harness, groups: [], "status")
        #expect(stranger.status == 4)
        #expect(stranger.error.contains("permission denied"))
        try harness.log.wait(for: "Denied a control request", seconds: 5)
        #expect(harness.log.all.contains { $0.contains("Denied a control request") && $0.contains("peer_uid=65534") })
        #expect(try harness.agent().content.knownGood == nil, "the denied promote changed nothing")
    }

    @Test("backstopd started by another user than root names what it could not do, and why")
    func daemonNeedsRoot() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        chmod(harness.directory, 0o755)
        let result = try asNobody("backstopd", harness, [])
        #expect(result.status == 1)
        #expect(result.error == "backstopd: \(harness.directory)/state: Permission denied (backstopd runs as root)\n", "\(result.error)")
    }

    @Test("With the daemon stopped, a reader that may not read the saved state is told so (exit 4), never shown an empty list")
    func savedStateUnreadable() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        chmod(harness.directory, 0o755)
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1")
        try harness.wait(for: "agent-ready")
        harness.stop()
        for arguments in [["content", "list", "demo", "--json"], ["boots", "--json"]] {
            let result = try asNobody("backstopctl", harness, arguments)
            #expect(result.status == 4, "\(arguments): \(result.output) \(result.error)")
            #expect(result.error.contains("Permission denied") && result.output.isEmpty, "\(arguments): \(result.error)")
        }
    }
}
