@testable import BackstopCore
import Foundation
import Testing

/// Clients that misbehave on the control socket never stop the daemon from serving others.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: the control socket is root's"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct ControlSocketTests {
    /// A connected, non-blocking client socket.
    func connectClient(_ harness: DaemonHarness) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        let connected = try UnixSocketAddress.withAddress(harness.directory + "/run/io.backstop.Manager") { connect(fd, $0, $1) }
        try #require(connected == 0)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    /// Sends `text` and a NUL, then reads one reply (blocking up to 10 s).
    func call(_ fd: Int32, _ text: String) -> String {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let message = Array(text.utf8) + [0]
        _ = send(fd, message, message.count, Int32(MSG_NOSIGNAL))
        return VarlinkReply.read(from: fd)
    }

    @Test("Invalid JSON and unknown methods get Varlink errors")
    func protocolErrors() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        try harness.start()
        let first = try connectClient(harness)
        defer { close(first) }
        #expect(call(first, "{not json").contains("org.varlink.service.InvalidParameter"))
        let second = try connectClient(harness)
        defer { close(second) }
        #expect(call(second, #"{"method":"io.backstop.Manager.Explode","parameters":{}}"#).contains("org.varlink.service.MethodNotFound"))
        #expect(call(second, #"{"method":"io.backstop.Manager.ListContent","parameters":{"agent":7}}"#).contains("InvalidParameter"))
        #expect(call(second, #"{"method":"io.backstop.Manager.ListContent","parameters":{"agent":"nope"}}"#).contains("io.backstop.Manager.NoSuchAgent"))
        #expect(call(second, #"{"method":"org.varlink.service.GetInfo"}"#).contains("io.backstop.Manager"))
        let description = call(second, #"{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"io.backstop.Manager"}}"#)
        #expect(description.contains("method ListBoots()"))
        #expect(description.contains("error VersionQuarantined"))
        if BackstopGroup.id == nil {
            var info = stat()
            stat(harness.directory + "/run/io.backstop.Manager", &info)
            #expect(info.st_mode & 0o777 == 0o600, "without group backstop the socket is root's alone")
        }
    }

    @Test("An oversized message is refused, and a client that leaves mid-reply does not disturb the daemon")
    func oversizedAndVanishingClients() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        try harness.start()
        let big = try connectClient(harness)
        defer { close(big) }
        let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 2 * Varlink.maximumMessageBytes)
        _ = fcntl(big, F_SETFL, fcntl(big, F_GETFL) & ~O_NONBLOCK)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(big, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = chunk.withUnsafeBytes { send(big, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        #expect(call(big, "").contains("message larger than"))

        for _ in 0..<50 {
            let vanishing = try connectClient(harness)
            let message = Array(#"{"method":"io.backstop.Manager.GetStatus","parameters":{}}"#.utf8) + [0]
            _ = send(vanishing, message, message.count, Int32(MSG_NOSIGNAL))
            close(vanishing)
        }
        let (report, exitCode) = try harness.status()
        #expect(exitCode == 0)
        #expect(report.daemon.running)
    }

    @Test("A client that sends calls without reading replies, and hundreds of idle clients, do not lock others out")
    func greedyAndIdleClients() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        try harness.start()
        let greedy = try connectClient(harness)
        defer { close(greedy) }
        let flood = [UInt8](String(repeating: #"{"method":"io.backstop.Manager.GetStatus","parameters":{}}"# + "\0", count: 60_000).utf8)
        var offset = 0
        // Write until the daemon stops reading (the socket buffer fills): it does not read ahead without bound.
        while offset < flood.count {
            let written = flood[offset...].withUnsafeBytes { send(greedy, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { break }
            offset += written
        }
        #expect(offset < flood.count, "the daemon applies backpressure instead of buffering every call")

        // Many greedy clients at once: each is held to a small buffer, and they can be
        // closed to make room, since none has a call running while it does not read.
        var greedyMany: [Int32] = []
        defer { greedyMany.forEach { close($0) } }
        for _ in 0..<(ControlServer.maximumConnections + 20) {
            let fd = try connectClient(harness)
            _ = flood.prefix(200_000).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            greedyMany.append(fd)
        }
        #expect(try harness.status().exitCode == 0)
        greedyMany.forEach { close($0) }
        greedyMany = []

        // A thousand clients that connect and never send.
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = max(limit.rlim_cur, min(limit.rlim_max, 4096))
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        var idle: [Int32] = []
        defer { idle.forEach { close($0) } }
        for _ in 0..<1000 { idle.append(try connectClient(harness)) }
        let (report, exitCode) = try harness.status()
        #expect(exitCode == 0)
        #expect(report.daemon.running)
        #expect(harness.log.all.contains { $0.contains("oldest control connection") })
    }
}

/// Without systemd (no unit, no scope), an agent's process is told by its session and parents.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: the control socket is root's"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3 for the agent that calls the socket"))
struct AgentCallerTests {
    @Test("A root agent that backstopd runs under bubblewrap, with no systemd to give it a scope, has every control call refused")
    func rootAgentWithoutSystemd() throws {
        let content = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-probe-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: content + "/v1", withIntermediateDirectories: true)
        defer { ContentStore.removeTree(content) }
        try ControlRefusalTests.probeAgent.write(toFile: content + "/v1/agent.py", atomically: true, encoding: .utf8)
        // A second name for the socket, outside the runtime directory: only the call's origin
        // may decide, not whether the runtime directory is in the agent's view.
        let socket = content + "/io.backstop.Manager"
        let harness = try DaemonHarness(agents: [
            DaemonHarness.demoAgent(name: "other"),
            """
            name = "direct"
            exec = ["/usr/bin/python3", "{content}/agent.py", "direct", "\(socket)", "\(content)"]
            failure_window_sec = 60
            """,
        ])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(Paths.sample("v1-good"), as: "v1", agent: "other")
        try harness.wait(for: "agent-ready")
        try harness.stage(content + "/v1", as: "v1", agent: "direct")
        try #require(link(harness.directory + "/run/io.backstop.Manager", socket) == 0, "\(String(cString: strerror(errno)))")
        try harness.log.wait(for: "event=agent-exited agent=direct", seconds: 30)
        let replies = try String(contentsOfFile: content + "/direct", encoding: .utf8).split(separator: "\n")
        #expect(replies.count == 4, "\(replies)")
        for reply in replies {
            #expect(reply.contains("\"error\":\"io.backstop.Manager.PermissionDenied\"")
                && reply.contains("calls from a supervised agent are refused: it belongs to agent direct"), "\(reply)")
        }
        #expect(try harness.agent("other").state == "running")
        #expect(try harness.agent("direct").content.knownGood == nil)
    }
}
