@testable import BackstopCore
import Foundation
import Testing

/// Every backstopctl verb against a running daemon and the demo agent, as an operator uses them.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows changes to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct VerbTests {
    @Test("stage, activate, promote, rollback, release, reset-failed, content list, status, boots")
    func everyVerb() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        try harness.start()

        #expect(try harness.ctl("stage", "demo", Paths.sample("v1-good"), "--version", "v1", "--activate").status == 0)
        try harness.wait(for: "agent-ready")
        #expect(try harness.ctl("promote", "demo", "v1").status == 0)
        #expect(try harness.ctl("stage", "demo", Paths.sample("v3-good"), "--version", "v3").status == 0)
        #expect(try harness.agent().content.active == "v1", "staging alone activates nothing")

        #expect(try harness.ctl("activate", "demo", "v3").status == 0)
        try harness.wait(for: "agent-ready", after: "content-activated")
        var agent = try harness.agent()
        #expect(agent.content.active == "v3")
        #expect(agent.content.candidate == "v3")
        #expect(try harness.ctl("promote", "demo", "v3").status == 0)
        #expect(try harness.agent().content.knownGood == "v3")

        #expect(try harness.ctl("rollback", "demo").status == 0)
        try harness.wait(for: "agent-ready", after: "rollback")
        agent = try harness.agent()
        #expect(agent.content.active == "v1")
        #expect(agent.lastRollback?.reason == "operator")
        #expect(try harness.ctl("rollback", "demo", "--to", "v3").status == 0)
        #expect(try harness.agent().content.active == "v3")

        #expect(try harness.ctl("stage", "demo", Paths.sample("v2-channel-291"), "--version", "v2", "--activate").status == 0)
        try harness.wait(for: "content-quarantined", seconds: 60)
        try harness.wait(for: "agent-ready", after: "content-quarantined")
        #expect(try harness.agent().content.quarantined == ["v2"])
        #expect(try harness.ctl("release", "demo", "v2").status == 0)
        #expect(try harness.agent().content.quarantined.isEmpty)
        let listing = try harness.ctl("content", "list", "demo", "--json")
        let versions = try JSONDecoder.backstop.decode([String: [VersionRecord]].self, from: Data(listing.output.utf8))["versions"] ?? []
        #expect(versions.map(\.id) == ["v1", "v3", "v2"])
        #expect(versions.first { $0.id == "v2" }?.standing == .staged)

        #expect(try harness.status().exitCode == 1, "rolled back since the last reset-failed")
        #expect(try harness.ctl("reset-failed", "demo").status == 0)
        #expect(try harness.status().exitCode == 0)
        let text = try harness.ctl("status")
        #expect(text.output.contains("● demo - running"))
        #expect(text.output.contains("Content: active v3, known-good v3, candidate -"))
        #expect(try harness.ctl("boots").status == 0)
    }

    @Test("A client that connects and never sends is dropped after the idle timeout", .timeLimit(.minutes(1)))
    func silentClientDropped() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        try harness.start()
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        try #require(try UnixSocketAddress.withAddress(harness.directory + "/run/io.backstop.Manager") { connect(fd, $0, $1) } == 0)
        var timeout = timeval(tv_sec: Int(ControlServer.idleTimeoutSeconds) + 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var byte: UInt8 = 0
        let started = Date()
        #expect(read(fd, &byte, 1) == 0, "the daemon closed the connection")
        #expect(Date().timeIntervalSince(started) >= Double(ControlServer.idleTimeoutSeconds) - 1)
    }

    @Test("backstopd --check-config warns about a capability an agent asks for that backstopd's own bounding set lacks",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "needs setpriv (util-linux) to narrow the bounding set"))
    func checkConfigCapabilityOutsideTheBoundingSet() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: DaemonHarness.testSandbox + "\ncapabilities = [\"CAP_NET_ADMIN\", \"CAP_NET_RAW\"]")])
        defer { harness.cleanUp() }
        let backstopd = Paths.binary("backstopd")
        let full = try Command.run(backstopd, ["--check-config", "--config", harness.configPath])
        #expect(full.status == 0, "\(full.error)")
        #expect(!full.error.contains("bounding set"), "\(full.error)")
        // As a unit with CapabilityBoundingSet=~CAP_NET_RAW would start it.
        let narrowed = try Command.run("/usr/bin/setpriv", ["--bounding-set", "-net_raw", backstopd, "--check-config", "--config", harness.configPath])
        #expect(narrowed.status == 0, "\(narrowed.error)")
        #expect(narrowed.error.contains("agent demo: sandbox: capabilities: CAP_NET_RAW is not in backstopd's own capability bounding set"), "\(narrowed.error)")
    }
}
