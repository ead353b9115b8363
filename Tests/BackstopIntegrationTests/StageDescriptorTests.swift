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
            return VarlinkReply.read(from: fd)
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

    @Test("a root caller without capabilities cannot have a file copied that it may not read itself; with them, the same staging works")
    func callerCapabilities() throws {
        let (harness, directory) = try startDaemon()
        defer { harness.cleanUp() }
        try "signature\n".write(toFile: directory + "/rules", atomically: false, encoding: .utf8)
        try "TOPSECRET\n".write(toFile: directory + "/secret", atomically: false, encoding: .utf8)
        try #require(chown(directory + "/secret", 65534, 65534) == 0 && chmod(directory + "/secret", 0o600) == 0)
        let withoutCapabilities = try Command.run(
            "/usr/bin/setpriv", ["--inh-caps=-all", "--bounding-set=-all", "--", Paths.binary("backstopctl"), "stage", "demo", directory,
                                 "--version", "v1", "--config", harness.configPath], environment: harness.serviceEnvironment)
        #expect(withoutCapabilities.status != 0 && withoutCapabilities.error.contains("Permission denied"), "\(withoutCapabilities.error)")
        #expect(try versions(harness).isEmpty)
        let asRoot = try harness.ctl("stage", "demo", directory, "--version", "v2")
        #expect(asRoot.status == 0, "\(asRoot.error)")
    }

    @Test("a sender that moves the offset of the directory it passed while the daemon reads cannot make it stage less than the directory holds")
    func sharedOffset() throws {
        let (harness, directory) = try startDaemon()
        defer { harness.cleanUp() }
        try FileManager.default.removeItem(atPath: directory)
        try FileManager.default.copyItem(atPath: Paths.sample("v3-good"), toPath: directory)
        let client = try RawClient(harness)
        defer { client.close() }
        let bundle = try OpenBundle.open(directory)
        defer { bundle.close() }
        // At the end of the directory before it is sent: a reader on the same open file would see no entry.
        while readdir(fdopendir(dup(bundle.descriptor.rawValue))) != nil {}
        _ = lseek(bundle.descriptor.rawValue, 0, SEEK_END)
        let stage = #"{"method":"io.backstop.Manager.Stage","parameters":{"agent":"demo","path":"\#(directory)","version":"v9","file_descriptor":0}}"#
        let staged = try client.call(stage, sending: [bundle.descriptor.rawValue])
        #expect(staged.contains(#""id":"v9""#) && staged.contains(#""file_count":4"#), "\(staged)")
    }

    @Test("a reload that changes the agent during its staging leaves the staged version whole; one that removes the agent refuses the staging and the daemon lives on")
    func reloadDuringStaging() throws {
        let (harness, directory) = try startDaemon()
        defer { harness.cleanUp() }
        try FileManager.default.removeItem(atPath: directory)
        try FileManager.default.copyItem(atPath: Paths.sample("v3-good"), toPath: directory)
        // Big enough that the copy is under way when the reload comes.
        let padding = directory + "/padding"
        try FileManager.default.createDirectory(atPath: padding, withIntermediateDirectories: true)
        for index in 0..<3000 { try "\(index)\n".write(toFile: padding + "/\(index)", atomically: false, encoding: .utf8) }
        let expected = try TreeInventory.scan(directory).summary.digest
        for (rewrite, version) in [("failure_threshold = 5", "v7"), (nil, "v8")] {
            let stage = Process()
            stage.executableURL = URL(fileURLWithPath: Paths.binary("backstopctl"))
            stage.arguments = ["stage", "demo", directory, "--version", version, "--config", harness.configPath]
            stage.environment = ProcessInfo.processInfo.environment.merging(harness.serviceEnvironment) { $1 }
            let output = Pipe()
            stage.standardOutput = output
            stage.standardError = output
            let staging = try StagingWatch(harness.directory + "/state/demo/staging")
            try stage.run()
            staging.waitForWork(seconds: 20)
            try harness.rewrite(agents: rewrite.map { [DaemonHarness.demoAgent(extra: $0)] } ?? [])
            try harness.reload(expecting: rewrite == nil ? "removed demo." : "restarted demo.")
            let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            stage.waitUntilExit()
            if rewrite != nil {
                #expect(stage.terminationStatus == 0, "\(said)")
                let record = try #require(try versions(harness).first { $0.id == version })
                #expect(record.fileCount == 3004 && record.digest == expected, "\(record)")
            } else {
                #expect(stage.terminationStatus != 0 && said.contains("no agent \"demo\" is configured"), "\(said)")
                #expect(try harness.status().report.daemon.running, "backstopd lives on")
            }
        }
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

        // Not opened for reading (O_PATH), and a file of the kernel's (procfs): refused before any read.
        for (path, flags, word) in [(Paths.sample("v3-good"), BackstopOpenFlags.pathOnly | O_DIRECTORY, "not opened for reading"),
                                    ("/proc/version", O_RDONLY, "kernel pseudo file system")] {
            let descriptor = open(path, flags | O_CLOEXEC)
            try #require(descriptor >= 0)
            defer { close(descriptor) }
            let answer = try client.call(stage.replacingOccurrences(of: "/pipe", with: path), sending: [descriptor])
            #expect(answer.contains("io.backstop.Manager.StagingRefused") && answer.contains(word), "\(answer)")
        }
        #expect(try versions(harness).isEmpty)

        let greedy = try RawClient(harness)
        defer { greedy.close() }
        let many = Array(repeating: pipe[0], count: ControlServer.maximumPendingDescriptors + 1)
        #expect(try greedy.call(stage, sending: many) == "", "the connection is dropped without a reply")
        #expect(try harness.status().report.daemon.running)
    }
}

/// open(2) flags Glibc's module does not export.
enum BackstopOpenFlags {
    /// `O_PATH` on Linux.
    static let pathOnly: Int32 = 0o10000000
}

extension Environment {
    /// Whether unshare(1) can make a mount namespace here (root, and no sandbox forbidding it).
    static var canUnshareMounts: Bool {
        isRoot && (try? Command.run("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/true"]))?.status == 0
    }
}

/// Waits, on inotify(7), for a staging to begin: a work directory made in `<store>/staging`.
final class StagingWatch {
    private let descriptor: Int32

    init(_ directory: String) throws {
        descriptor = inotify_init1(Int32(IN_CLOEXEC))
        try #require(descriptor >= 0 && inotify_add_watch(descriptor, directory, UInt32(IN_CREATE)) >= 0)
    }

    /// Returns once something is made there, or after `seconds`.
    func waitForWork(seconds: Double) {
        var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        _ = poll(&entry, 1, Int32(seconds * 1000))
        close(descriptor)
    }
}
