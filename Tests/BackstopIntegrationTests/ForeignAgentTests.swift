@testable import BackstopCore
import Foundation
import Testing

/// Agents that nobody here wrote are rolled back the same way as the demo agent:
/// a shell script, and ClamAV's clamd with its signature database as the content.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct ForeignAgentTests {
    @Test("A shell-script agent that crashes on some content is rolled back")
    func shellScriptAgent() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let script = scratch.path + "/agent.sh"
        try """
            #!/bin/sh
            # Loads every rule file; a rule file that says "overflow" crashes it, dumping core here.
            cd "\(scratch.path)"
            ulimit -c unlimited
            for rule in "$1"/*.rules; do
                if grep -q overflow "$rule"; then kill -SEGV $$; fi
            done
            echo "agent.sh: loaded $BACKSTOP_CONTENT_VERSION"
            exec sleep 3600
            """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let good = try scratch.makeDirectory("good", files: ["base.rules": "allow all\n"])
        let bad = try scratch.makeDirectory("bad", files: ["base.rules": "allow all\n", "new.rules": "overflow\n"])

        let harness = try DaemonHarness(agents: ["""
            name = "script"
            exec = ["\(script)", "{content}"]
            failure_window_sec = 60
            """])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(good, as: "r1", agent: "script")
        try harness.wait(for: "agent-ready")
        #expect(try harness.ctl("promote", "script", "r1").status == 0)
        try harness.stage(bad, as: "r2", agent: "script")
        try harness.wait(for: "rollback", seconds: 60)
        try harness.wait(for: "agent-ready", after: "rollback")
        let agent = try harness.agent("script")
        #expect(agent.content.active == "r1")
        #expect(agent.content.quarantined == ["r2"])
        #expect(agent.lastRollback?.reason == "crash-loop")
        #expect(agent.state == "running")
        let crashes = harness.log.all.filter { $0.contains("event=agent-exited") && $0.contains("reason=crashed") && $0.contains("version=r2") }
        #expect(crashes.count == 3)
        // The kernel keeps the core-dump bit for a pidfd holder from Linux 6.15 on (PIDFD_INFO_EXIT).
        if KernelRelease.atLeast(6, 15) {
            #expect(crashes.allSatisfy { $0.contains("signal SIGSEGV (core dumped)") })
        }
    }

    @Test(
        "clamd: a good signature database, then a malformed one, ends rolled back to the good one",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/sbin/clamd"),
                 "needs clamd from Debian's clamav-daemon (`make test` installs it)"))
    func clamdMalformedDatabase() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        // One MD5 signature for the EICAR test file (sigtool --md5), in ClamAV's .hdb format.
        let eicar = "44d88612fea8a8f36de82e1278abb02f:68:Backstop.Test.EICAR\n"
        let good = try scratch.makeDirectory("db-good", files: ["backstop.hdb": eicar])
        // A body signature whose pattern is not hex: clamd refuses the whole database and exits 1.
        let malformed = try scratch.makeDirectory(
            "db-malformed", files: ["backstop.hdb": eicar, "update.ndb": "Backstop.Test.Bad:0:*:ZZZZ\n"])
        let socketPath = scratch.path + "/clamd.sock"
        try """
            Foreground yes
            LocalSocket \(socketPath)
            FixStaleSocket yes
            Bytecode no
            """.write(toFile: scratch.path + "/clamd.conf", atomically: true, encoding: .utf8)

        // In the sandbox an operator would give it: its own user, writing only its socket's directory.
        let clamav = try #require(getpwnam("clamav")?.pointee)
        #expect(chown(scratch.path, clamav.pw_uid, clamav.pw_gid) == 0)
        let harness = try DaemonHarness(agents: ["""
            name = "clamav"
            exec = ["/usr/sbin/clamd", "--config-file=\(scratch.path)/clamd.conf", "--datadir={content}"]
            failure_window_sec = 60
            [agent.sandbox]
            user = "clamav"
            read_write_paths = ["\(scratch.path)"]
            """])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(good, as: "sigs-1", agent: "clamav")
        try harness.wait(for: "agent-ready")
        #expect(try clamdAnswersPing(socketPath))
        // A scan of a stream needs a temporary file: its private /tmp must be writable to clamav.
        let verdict = try #require(try clamd(socketPath, instream: Array(Self.eicarTestFile.utf8)))
        #expect(verdict.contains("Backstop.Test.EICAR") && verdict.hasSuffix("FOUND"), "clamd scans in its sandbox: \(verdict)")
        #expect(try harness.ctl("promote", "clamav", "sigs-1").status == 0)

        try harness.stage(malformed, as: "sigs-2", agent: "clamav")
        try harness.wait(for: "rollback", seconds: 60)
        try harness.wait(for: "agent-ready", after: "rollback")
        let agent = try harness.agent("clamav")
        #expect(agent.content.active == "sigs-1")
        #expect(agent.content.knownGood == "sigs-1")
        #expect(agent.content.quarantined == ["sigs-2"])
        #expect(agent.state == "running")
        #expect(harness.log.all.filter { $0.contains("event=agent-exited") && $0.contains("reason=exited") && $0.contains("version=sigs-2") }.count == 3)
        #expect(harness.log.all.contains { $0.contains("Malformed database") })
        #expect(try clamdAnswersPing(socketPath), "clamd serves again on the good database")
    }

    @Test(
        "clamd with a ready_check_exec PING is ready, and promoted, only once it has loaded its database and answers",
        .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/clamdscan"),
                 "needs clamd and clamdscan from Debian's clamav-daemon (`make test` installs them)"))
    func clamdReadyCheck() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        // 200,000 MD5 signatures: enough that clamd needs a moment to load them before it listens.
        var signatures = "44d88612fea8a8f36de82e1278abb02f:68:Backstop.Test.EICAR\n"
        for index in 0..<200_000 {
            signatures += String(format: "%016llx%016llx:%d:Backstop.Test.%d\n", UInt64(index) &* 0x9E37_79B9_7F4A_7C15, UInt64(index), 1000 + index % 5000, index)
        }
        let database = try scratch.makeDirectory("db", files: ["backstop.hdb": signatures])
        let socketPath = scratch.path + "/clamd.sock"
        let conf = scratch.path + "/clamd.conf"
        try """
            Foreground yes
            LocalSocket \(socketPath)
            FixStaleSocket yes
            Bytecode no
            """.write(toFile: conf, atomically: true, encoding: .utf8)
        let harness = try DaemonHarness(agents: ["""
            name = "clamav"
            exec = ["/usr/sbin/clamd", "--config-file=\(conf)", "--datadir={content}"]
            ready_check_exec = ["/usr/bin/clamdscan", "--config-file=\(conf)", "--ping", "1"]
            health_check_exec = ["/usr/bin/clamdscan", "--config-file=\(conf)", "--ping", "1"]
            health_check_interval_sec = 1
            probation_sec = 3
            start_timeout_sec = 120
            """])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(database, as: "sigs-1", agent: "clamav")
        try harness.wait(for: "agent-ready", seconds: 120)
        #expect(try clamdAnswersPing(socketPath), "ready means clamd answers")
        let lines = harness.log.all
        let ready = try #require(lines.firstIndex { $0.contains("event=agent-ready") })
        let started = try #require(lines.firstIndex { $0.contains("event=agent-started") })
        let failedChecks = lines[started..<ready].filter { $0.contains("The ready check of agent clamav failed") }
        #expect(!failedChecks.isEmpty, "while clamd loads its database the check fails and the agent stays starting")
        try harness.wait(for: "content-promoted", seconds: 30)
        let agent = try harness.agent("clamav")
        #expect(agent.content.knownGood == "sigs-1")
        #expect(agent.failures.list.isEmpty, "the health checks passed")
    }

    /// The EICAR anti-virus test file (its MD5 is 44d88612fea8a8f36de82e1278abb02f).
    static let eicarTestFile = #"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"#

    /// Sends `zPING\0` to clamd's socket and expects `PONG\0` (clamd(8), COMMANDS).
    func clamdAnswersPing(_ path: String) throws -> Bool {
        try clamd(path, send: Array("zPING".utf8) + [0])?.hasPrefix("PONG") == true
    }

    /// Has clamd scan `data` sent as a stream (clamd(8), INSTREAM: chunks of a 4-byte
    /// big-endian length and the bytes, ended by a zero length) and returns its verdict,
    /// such as `stream: NAME FOUND`.
    func clamd(_ path: String, instream data: [UInt8]) throws -> String? {
        let length = UInt32(data.count).bigEndian
        let chunk = withUnsafeBytes(of: length) { Array($0) } + data
        return try clamd(path, send: Array("zINSTREAM".utf8) + [0] + chunk + [0, 0, 0, 0])
    }

    /// Sends one command to clamd's socket and returns its reply without the trailing NUL,
    /// nil when clamd does not answer within 5 s.
    func clamd(_ path: String, send message: [UInt8]) throws -> String? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard try UnixSocketAddress.withAddress(path, { connect(fd, $0, $1) }) == 0 else { return nil }
        guard send(fd, message, message.count, Int32(MSG_NOSIGNAL)) == message.count else { return nil }
        var reply = [UInt8](repeating: 0, count: 256)
        let count = recv(fd, &reply, reply.count, Int32(MSG_WAITALL))
        guard count > 0 else { return nil }
        return String(decoding: reply[..<count].prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// The running kernel's release, for behaviour that depends on it.
enum KernelRelease {
    /// Whether `uname -r` is at least `major.minor`.
    static func atLeast(_ major: Int, _ minor: Int) -> Bool {
        var name = utsname()
        uname(&name)
        let release = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard numbers.count == 2 else { return false }
        return (numbers[0], numbers[1]) >= (major, minor)
    }
}

/// A scratch directory for a test's fixtures, removed by the test.
struct TemporaryDirectory {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-fixture-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Creates `name/` holding `files` (name → text) and returns its path.
    func makeDirectory(_ name: String, files: [String: String]) throws -> String {
        let directory = path + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (file, text) in files { try text.write(toFile: directory + "/" + file, atomically: true, encoding: .utf8) }
        return directory
    }

    func remove() { ContentStore.removeTree(path) }
}
