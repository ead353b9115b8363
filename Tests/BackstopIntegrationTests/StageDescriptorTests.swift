@testable import BackstopCore
import Foundation
import Testing

/// `backstopctl stage` opens the bundle as the caller, in the caller's mount namespace, and
/// backstopd reads only through the descriptor sent with the call: a path in the caller's
/// private /tmp works, and a path hidden from the caller never reaches the store.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: it mounts tmpfs in mount namespaces of its own, and staging is root's"),
    .enabled(if: Environment.canUnshareMounts, "needs unshare(1) (util-linux) and permission to make mount namespaces"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct StageDescriptorTests {
    /// Runs `script` with sh -e in a mount namespace of its own (unshare(1), private propagation),
    /// `arguments` as $1, $2, …; what it mounts goes away with it.
    func inPrivateMountNamespace(_ script: String, _ arguments: String...) throws -> CommandResult {
        try Command.run("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-ec", script, "sh"] + arguments)
    }

    /// The versions `content list --json` shows.
    func versions(_ harness: DaemonHarness) throws -> [VersionRecord] {
        struct Listing: Decodable { var versions: [VersionRecord] }
        let result = try harness.ctl("content", "list", "demo", "--json")
        try #require(result.status == 0, "\(result.error)")
        return try JSONDecoder.backstop.decode(Listing.self, from: Data(result.output.utf8)).versions
    }

    /// A started daemon with one demo agent, and `directory`, an empty directory for the test's mounts.
    func startDaemon() throws -> (harness: DaemonHarness, directory: String) {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        let directory = harness.directory + "/private"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try harness.start()
        return (harness, directory)
    }

    @Test("a directory that exists only in the caller's private mount namespace is staged, with the digest of its content")
    func privateDirectory() throws {
        let (harness, directory) = try startDaemon()
        defer { harness.cleanUp() }
        try harness.stage(Paths.sample("v3-good"), as: "reference", activate: false)
        let result = try inPrivateMountNamespace(
            #"mount -t tmpfs tmpfs "$1"; cp -r "$2" "$1/v3"; "$3" stage demo "$1/v3" --version v3 --config "$4""#,
            directory, Paths.sample("v3-good"), Paths.binary("backstopctl"), harness.configPath)
        #expect(result.status == 0, "\(result.error)")
        #expect(result.output.contains("Staged v3 for demo (4 files"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty, "the tmpfs was the caller's alone")
        let staged = try versions(harness)
        let reference = try #require(staged.first { $0.id == "reference" })
        let v3 = try #require(staged.first { $0.id == "v3" })
        #expect(v3.digest == reference.digest)
        #expect(v3.fileCount == 4)
    }

    @Test("a tar archive in the caller's private mount namespace is staged through its descriptor")
    func privateArchive() throws {
        let (harness, directory) = try startDaemon()
        defer { harness.cleanUp() }
        try harness.stage(Paths.sample("v3-good"), as: "reference", activate: false)
        let result = try inPrivateMountNamespace(
            #"mount -t tmpfs tmpfs "$1"; tar -czf "$1/v4.tar.gz" -C "$2" .; "$3" stage demo "$1/v4.tar.gz" --version v4 --config "$4""#,
            directory, Paths.sample("v3-good"), Paths.binary("backstopctl"), harness.configPath)
        #expect(result.status == 0, "\(result.error)")
        let staged = try versions(harness)
        #expect(staged.first { $0.id == "v4" }?.digest == staged.first { $0.id == "reference" }?.digest)
    }

    @Test("a root caller staging a path hidden from it under a tmpfs stages what it sees, never the host's file behind it")
    func hiddenPathStagesTheCallersView() throws {
        let (harness, directory) = try startDaemon()
        defer { harness.cleanUp() }
        let secret = "host-secret-" + UUID().uuidString
        try Data(secret.utf8).write(to: URL(fileURLWithPath: directory + "/secret.conf"))
        let result = try inPrivateMountNamespace(
            #"mount -t tmpfs tmpfs "$1"; echo caller-content > "$1/visible.conf"; "$2" stage demo "$1" --version v9 --config "$3""#,
            directory, Paths.binary("backstopctl"), harness.configPath)
        #expect(result.status == 0, "\(result.error)")
        let store = ContentStore(stateDirectory: harness.directory + "/state", agent: "demo")
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.path(of: "v9")) == ["visible.conf"])
        let enumerator = try #require(FileManager.default.enumerator(atPath: store.root))
        for case let relative as String in enumerator {
            let contents = FileManager.default.contents(atPath: store.root + "/" + relative) ?? Data()
            #expect(!String(decoding: contents, as: UTF8.self).contains(secret), "\(relative) holds the host's secret")
        }
    }

    @Test("backstopctl stage says locally when it cannot open the bundle")
    func cannotOpen() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        let missing = harness.directory + "/missing"
        let result = try harness.ctl("stage", "demo", missing)
        #expect(result.status == 1)
        #expect(result.error == "backstopctl: cannot open \(missing): No such file or directory\n")
    }

    /// A blocking client of the daemon's socket, for calls written by hand.
    struct RawClient {
        let fd: Int32

        init(_ harness: DaemonHarness) throws {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let connected = try UnixSocketAddress.withAddress(harness.directory + "/run/io.backstop.Manager") { connect(fd, $0, $1) }
            try #require(connected == 0)
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }

        /// Sends `text` and a NUL with `descriptors` attached, and reads one reply ("" when the daemon closes the connection).
        func call(_ text: String, sending descriptors: [Int32] = []) throws -> String {
            let message = Array(text.utf8) + [0]
            let sent = try message.withUnsafeBytes { try DescriptorPassing.send(fd, $0, descriptors: descriptors) }
            try #require(sent == message.count)
            var reply: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !reply.contains(0) {
                let count = read(fd, &buffer, buffer.count)
                guard count > 0 else { break }
                reply += buffer[..<count]
            }
            return String(decoding: reply.prefix { $0 != 0 }, as: UTF8.self)
        }

        func close() { _ = Glibc.close(fd) }
    }

    /// The paths the daemon's open descriptors name (/proc/PID/fd, proc(5)).
    func openPaths(of harness: DaemonHarness) throws -> [String] {
        let pid = try #require(harness.process?.processIdentifier)
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
        return fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)") }
    }

    @Test("Stage without a descriptor is refused and opens nothing; descriptors sent are closed whatever the call did")
    func stageWithoutDescriptor() throws {
        let (harness, directory) = try startDaemon()
        defer { harness.cleanUp() }
        let client = try RawClient(harness)
        defer { client.close() }
        let sample = Paths.sample("v3-good")
        let stage = #"{"method":"io.backstop.Manager.Stage","parameters":{"agent":"demo","path":"\#(sample)","version":"v5""#
        let withIndex = try client.call(stage + #","file_descriptor":0}}"#)
        #expect(withIndex.contains(#""error":"io.backstop.Manager.FileDescriptorRequired""#), "\(withIndex)")
        #expect(withIndex.contains("does not open paths"))
        let withoutIndex = try client.call(stage + "}}")
        #expect(withoutIndex.contains("io.backstop.Manager.FileDescriptorRequired"), "\(withoutIndex)")
        #expect(try versions(harness).isEmpty, "nothing was staged from the path")

        let bundle = try OpenBundle.open(directory)
        defer { bundle.close() }
        // Sent with calls that do not take it (no index, an index past it, another method): closed all the same.
        #expect(try client.call(stage + "}}", sending: [bundle.descriptor.rawValue]).contains("FileDescriptorRequired"))
        let pastIt = try client.call(stage + #","file_descriptor":1}}"#, sending: [bundle.descriptor.rawValue])
        #expect(pastIt.contains(#""parameter":"file_descriptor""#), "\(pastIt)")
        #expect(try client.call(#"{"method":"io.backstop.Manager.GetStatus"}"#, sending: [bundle.descriptor.rawValue]).contains("agents"))
        #expect(try !openPaths(of: harness).contains(directory), "the daemon closed every descriptor it was sent")

        // Staged through the descriptor, then closed too.
        let staged = try client.call(stage + #","file_descriptor":0}}"#, sending: [bundle.descriptor.rawValue])
        #expect(staged.contains(#""id":"v5""#), "\(staged)")
        #expect(try !openPaths(of: harness).contains(directory))
    }

    @Test("a descriptor that is neither a directory nor a file is refused; too many descriptors drop the connection, not the daemon")
    func badDescriptors() throws {
        let (harness, _) = try startDaemon()
        defer { harness.cleanUp() }
        var pipe: [Int32] = [0, 0]
        try #require(Glibc.pipe(&pipe) == 0)
        defer { pipe.forEach { _ = close($0) } }
        let stage = #"{"method":"io.backstop.Manager.Stage","parameters":{"agent":"demo","path":"/pipe","file_descriptor":0}}"#

        let client = try RawClient(harness)
        defer { client.close() }
        let refused = try client.call(stage, sending: [pipe[0]])
        #expect(refused.contains("io.backstop.Manager.StagingRefused") && refused.contains("/pipe is a FIFO"), "\(refused)")

        let greedy = try RawClient(harness)
        defer { greedy.close() }
        let many = Array(repeating: pipe[0], count: ControlServer.maximumPendingDescriptors + 1)
        #expect(try greedy.call(stage, sending: many) == "", "the connection is dropped without a reply")
        #expect(try harness.status().report.daemon.running)
    }
}

extension Environment {
    /// Whether unshare(1) can make a mount namespace here (root, and no sandbox forbidding it).
    static var canUnshareMounts: Bool {
        isRoot && (try? Command.run("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/true"]))?.status == 0
    }
}
