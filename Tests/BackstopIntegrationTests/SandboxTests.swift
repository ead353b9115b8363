import Foundation
import Synchronization
import Testing
@testable import BackstopCore

/// The direct engine's sandbox, proved from inside: an agent (Fixtures/escape.py, staged as
/// its content) tries to write outside its paths, read an inaccessible path, gain a
/// capability, reach the host's network, exceed memory_max and fork past tasks_max.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: bubblewrap runs unprivileged only with user namespaces, and the agent changes user"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: BubblewrapSandbox.program), "needs bubblewrap: `make test` installs it"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3 for the escaping agent: `make test` installs it"))
struct SandboxTests {
    /// Runs the escaping agent with `sandbox` (the body of `[agent.sandbox]`) and returns its
    /// report: attempt name → "refused …" or "allowed …".
    func escapeReport(sandbox: String) throws -> [String: String] {
        let reports = try TemporaryDirectory()
        defer { reports.remove() }
        // The agent may run as nobody: its one writable directory must be writable to it.
        #expect(chmod(reports.path, 0o777) == 0)
        let listener = try TCPListener()
        defer { listener.close() }
        let content = try reports.makeDirectory("content", files: [
            "escape.py": try String(contentsOfFile: Paths.repository + "/Tests/BackstopIntegrationTests/Fixtures/escape.py", encoding: .utf8),
        ])
        let storeLink = reports.path + "/store"
        let harness = try DaemonHarness(agents: ["""
            name = "escape"
            exec = ["/usr/bin/python3", "{content}/escape.py", "\(reports.path)", "\(listener.port)", "\(storeLink)"]
            notify = true
            [agent.sandbox]
            read_write_paths = ["\(reports.path)", "\(storeLink)"]
            \(sandbox)
            """])
        defer { harness.cleanUp() }
        #expect(symlink(harness.directory + "/state", storeLink) == 0)
        try harness.start()
        try harness.stage(content, as: "v1", agent: "escape")
        try harness.wait(for: "agent-ready", seconds: 60)
        let text = try String(contentsOfFile: reports.path + "/report", encoding: .utf8)
        #expect(text.hasSuffix("done\n"), "\(text)")
        var report: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ", maxSplits: 1)
            if words.count == 2 { report[String(words[0])] = String(words[1]) }
        }
        return report
    }

    @Test("The default sandbox (with memory_max and tasks_max set) holds against every escape attempt; the agent still writes its own directory and its private /tmp")
    func defaultSandboxHolds() throws {
        let report = try escapeReport(sandbox: "memory_max = \"64M\"\ntasks_max = 8")
        for attempt in ["write-outside", "write-content", "write-store-link", "read-inaccessible", "gain-capability", "network", "memory", "tasks"] {
            #expect(report[attempt]?.hasPrefix("refused") == true, "\(attempt): \(report[attempt] ?? "no report")")
        }
        #expect(report["write-own"]?.hasPrefix("allowed") == true, "\(report["write-own"] ?? "no report")")
        #expect(report["write-tmp"]?.hasPrefix("allowed") == true, "its private /tmp is writable to it, as a /tmp is: \(report["write-tmp"] ?? "no report")")
        for attempt in ["fill-tmp", "fill-var-tmp"] {
            #expect(report[attempt] == "refused No space left on device", "the private tmpfs holds tmp_size (a quarter of memory_max): \(attempt): \(report[attempt] ?? "no report")")
        }
        #expect(report["identity"] == "uid=65534 gid=65534", "the default user is nobody")
        #expect(!FileManager.default.fileExists(atPath: "/etc/backstop-escape"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/backstop-escape-tmp"), "its /tmp is its own")
    }

    @Test("With the settings opened up, the same attempts succeed: the agent can tell, so the test above can fail")
    func openSandboxLetsThrough() throws {
        defer { try? FileManager.default.removeItem(atPath: "/etc/backstop-escape") }
        let report = try escapeReport(sandbox: """
            user = "root"
            capabilities = ["CAP_SYS_ADMIN"]
            no_new_privileges = false
            read_only_paths = []
            inaccessible_paths = []
            private_network = false
            tasks_max = "infinity"
            tmp_size = "1G"
            """)
        for attempt in ["write-outside", "read-inaccessible", "gain-capability", "network", "memory", "tasks", "write-own", "fill-tmp", "fill-var-tmp"] {
            #expect(report[attempt]?.hasPrefix("allowed") == true, "\(attempt): \(report[attempt] ?? "no report")")
        }
        for attempt in ["write-content", "write-store-link"] {
            #expect(report[attempt]?.hasPrefix("refused") == true, "Backstop's state directory stays read-only: \(attempt): \(report[attempt] ?? "no report")")
        }
        #expect(report["identity"] == "uid=0 gid=0")
    }
}

extension SandboxTests {
    @Test("A writable path that does not exist is exec-failed, never the content's fault (the sandbox cannot make it); once it exists the agent starts and writes there")
    func missingWritablePath() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        #expect(chmod(scratch.path, 0o755) == 0)
        let writable = scratch.path + "/agent-state"
        let content = try scratch.makeDirectory("content", files: ["agent.sh": "echo written > \"$1/file\" || exit 1\necho agent wrote its file\nexec sleep 600\n"])
        let harness = try DaemonHarness(agents: ["""
            name = "script"
            exec = ["/bin/sh", "{content}/agent.sh", "\(writable)"]
            [agent.sandbox]
            read_write_paths = ["\(writable)"]
            """])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(content, as: "v1", agent: "script")
        try harness.wait(for: "agent-exited", seconds: 20)
        let exited = try #require(harness.log.all.first { $0.contains("event=agent-exited") })
        #expect(exited.contains("reason=exec-failed") && exited.contains("\(writable) does not exist"), "\(exited)")
        #expect(try harness.agent("script").content.quarantined.isEmpty)

        try FileManager.default.createDirectory(atPath: writable, withIntermediateDirectories: false)
        #expect(chmod(writable, 0o777) == 0)
        // Its stdout is the daemon's here (no journald): the line says the write went through.
        try harness.log.wait(for: "agent wrote its file", seconds: 30)
        #expect(try String(contentsOfFile: writable + "/file", encoding: .utf8) == "written\n")
        #expect(try harness.agent("script").pid != nil)
    }

    @Test("A sandbox that fails to be set up after bwrap made its child (a mount that fails) is a launch failure, never the agent's own exit; the agent's own exit code 1 stays its own")
    func setUpFailureIsNotTheAgents() async throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let writable = try scratch.makeDirectory("writable", files: [:])
        try BubblewrapSandbox.preparePlaceholders(in: scratch.path + "/inaccessible")
        var spec = SandboxSpec()
        spec.readWritePaths = [writable]
        var sandbox = BubblewrapSandbox(
            spec: spec, account: SandboxAccount(user: "nobody", uid: 65534, group: "nogroup", gid: 65534, hasPasswdEntry: true),
            protectedDirectories: [], placeholderDirectory: scratch.path + "/inaccessible")
        sandbox.cgroupScope = false
        var request = LaunchRequest(identifier: "backstop-test", arguments: ["/bin/sh", "-c", "exit 1"], environment: [:])
        request.sandbox = sandbox
        let own = await DirectRunner.run(request) { _ in }
        #expect(try own.get() == .exited(code: 1))

        // The writable path's source is gone by the time bwrap mounts it: bwrap has reported its
        // child, then fails (exit 1) before setpriv, bash and the agent.
        request.sandbox!.substitutes[writable] = scratch.path + "/vanished"
        let started = Mutex<Int32?>(nil)
        let failed = await DirectRunner.run(request) { pid in started.withLock { $0 = pid } }
        #expect(started.withLock { $0 } != nil, "bwrap made its child before the mount failed")
        guard case .failure(let error) = failed else {
            Issue.record("a set-up failure was taken for the agent's exit: \(failed)")
            return
        }
        #expect(error.message.contains("the sandbox could not be set up"), "\(error.message)")
    }
}

/// A TCP socket listening on the host's 127.0.0.1, on a port the kernel picks.
struct TCPListener {
    let descriptor: Int32
    let port: UInt16

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        self.descriptor = descriptor
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                bind(descriptor, address, length) == 0 && listen(descriptor, 8) == 0 && getsockname(descriptor, address, &length) == 0
            }
        }
        guard bound else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        port = UInt16(bigEndian: address.sin_port)
    }

    func close() { _ = Glibc.close(descriptor) }
}
