import Foundation
import Testing
@testable import BackstopCore

/// No verdict against content without a comparison: a first content that fails in a sandbox
/// it cannot live in, and a preflight that fails for the control version too.
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only, and bubblewrap runs as root"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: BubblewrapSandbox.program), "needs bubblewrap: `make test` installs it"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/bin/bash"), "the agents are bash scripts (/dev/tcp)"))
struct ComparisonTests {
    /// An agent whose script appends to `log`, exits 1 when it cannot (the shell's message goes
    /// to stderr) and else runs on; its sandbox writes only to `writable`.
    static func loggingAgent(log: String, writable: [String]) -> String {
        """
        name = "script"
        exec = ["/bin/bash", "{content}/agent.sh", "\(log)"]
        failure_threshold = 3
        restart_delay_ms = 50
        restart_delay_max_sec = 1
        probation_sec = 3
        [agent.sandbox]
        user = "root"
        private_tmp = false
        read_write_paths = [\(writable.map { "\"\($0)\"" }.joined(separator: ", "))]
        """
    }

    static let loggingScript = """
        echo "started on $BACKSTOP_CONTENT_VERSION" >> "$1" || exit 1
        exec sleep 600
        """

    @Test("First content that cannot write its log (read-only file system) is not quarantined: status says it fails on its first content and names read_write_paths; opening it brings the agent up")
    func firstContentInAReadOnlySandbox() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let logs = try scratch.makeDirectory("logs", files: [:])
        let content = try scratch.makeDirectory("v1", files: ["agent.sh": Self.loggingScript])
        let harness = try DaemonHarness(agents: [Self.loggingAgent(log: logs + "/agent.log", writable: [])])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(content, as: "v1", agent: "script")
        try harness.wait(for: "crash-loop")

        let loop = try #require(harness.log.all.first { $0.contains("event=crash-loop") })
        #expect(loop.contains("version=v1") && loop.contains("reason=no-comparison"), "\(loop)")
        #expect(loop.contains("read_write_paths"), "\(loop)")
        #expect(!harness.log.all.contains { $0.contains("event=content-quarantined") || $0.contains("event=gave-up") || $0.contains("event=safe-mode") })
        let exit = try #require(harness.log.all.last { $0.contains("event=agent-exited") })
        #expect(exit.contains("EROFS") && exit.contains("read_write_paths"), "the decision names the obstacle and the setting: \(exit)")

        // Still retried: more starts come after the crash loop.
        let started = harness.log.all.filter { $0.contains("event=agent-started") }.count
        try harness.wait(for: "agent-started", count: started + 2)
        let (report, code) = try harness.status()
        #expect(code == 1, "degraded")
        let agent = try #require(report.agents.first { $0.name == "script" })
        #expect(agent.content.quarantined.isEmpty && agent.content.active == "v1" && agent.content.candidate == "v1")
        #expect(agent.state != "given-up")
        let reason = try #require(agent.degradedReason)
        #expect(reason.contains("failing on its first content v1") && reason.contains("read_write_paths"), "\(reason)")
        #expect(agent.firstContentFailure?.version == "v1")
        #expect(agent.firstContentFailure?.obstacle == "read-only-file-system")
        #expect(agent.firstContentFailure?.setting == "read_write_paths")
        let text = try harness.ctl("status", "script")
        #expect(text.output.contains("failing on its first content v1"), "\(text.output)")
        let sandbox = try harness.ctl("sandbox", "script")
        #expect(sandbox.status == 0, "\(sandbox.error)")
        #expect(sandbox.output.contains("in the way:") && sandbox.output.contains("read_write_paths  the agent's output on content v1 showed a write to a read-only file system"), "\(sandbox.output)")

        // The operator opens the log directory: the same content comes up, is no longer reported, and passes probation.
        try harness.rewrite(agents: [Self.loggingAgent(log: logs + "/agent.log", writable: [logs])])
        try harness.reload(expecting: "Reloaded")
        try harness.wait(for: "content-promoted")
        let promoted = try harness.agent("script")
        #expect(promoted.content.knownGood == "v1" && promoted.state == "running")
        #expect(promoted.firstContentFailure == nil && !promoted.degraded, "\(promoted.degradedReason ?? "")")
        #expect(try String(contentsOfFile: logs + "/agent.log", encoding: .utf8).contains("started on v1"))
    }

    @Test("With a known-good version to compare with, the same failure on a candidate is a verdict: quarantined and rolled back")
    func laterVersionIsJudgedAgainstKnownGood() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let logs = try scratch.makeDirectory("logs", files: [:])
        let good = try scratch.makeDirectory("good", files: ["agent.sh": "exec sleep 600\n"])
        // The new version writes where the sandbox does not let it.
        let writing = try scratch.makeDirectory("writing", files: ["agent.sh": Self.loggingScript])
        let harness = try DaemonHarness(agents: [Self.loggingAgent(log: logs + "/agent.log", writable: [])])
        defer { harness.cleanUp() }
        try harness.start()
        try harness.stage(good, as: "v1", agent: "script")
        try harness.wait(for: "content-promoted")
        try harness.stage(writing, as: "v2", agent: "script")
        try harness.wait(for: "rollback")

        let loop = try #require(harness.log.all.first { $0.contains("event=crash-loop") })
        #expect(loop.contains("version=v2") && loop.contains("reason=exited"), "\(loop)")
        #expect(harness.log.all.contains { $0.contains("event=content-quarantined") && $0.contains("version=v2") && $0.contains("reason=crash-loop") })
        try harness.wait(for: "agent-ready", after: "rollback")
        let agent = try harness.agent("script")
        #expect(agent.content.active == "v1" && agent.content.quarantined == ["v2"])
        #expect(agent.firstContentFailure == nil)
    }

    /// A shell agent that needs a local TCP service: it connects to 127.0.0.1:`port` and
    /// exits 1 when it cannot, else runs on. The live agent shares the host's network.
    static func serviceAgent(port: UInt16) -> String {
        """
        name = "client"
        exec = ["/bin/bash", "{content}/agent.sh", "\(port)"]
        preflight_sec = 2
        probation_sec = 600
        restart_delay_ms = 50
        [agent.sandbox]
        user = "root"
        private_tmp = false
        private_network = false
        """
    }

    static let serviceScript = """
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        exec sleep 600
        """

    @Test("A preflight whose instance cannot reach the local service fails the control too: the candidate is not quarantined but activated under probation, and the control run is in the journal and status; --check-config warns")
    func preflightThatCannotJudge() throws {
        let service = try LocalService()
        defer { service.close() }
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let v1 = try scratch.makeDirectory("v1", files: ["agent.sh": Self.serviceScript])
        let v2 = try scratch.makeDirectory("v2", files: ["agent.sh": Self.serviceScript, "rules": "2\n"])
        let harness = try DaemonHarness(agents: [Self.serviceAgent(port: service.port)])
        defer { harness.cleanUp() }

        let check = try Command.run(Paths.binary("backstopd"), ["--check-config", "--config", harness.configPath])
        #expect(check.status == 0, "\(check.error)")
        #expect((check.output + check.error).contains("a preflight instance has a network of its own"), "\(check.output)\(check.error)")

        try harness.start()
        // The first content: no version to run as a control, so the preflight cannot judge it.
        let first = try harness.ctl("stage", "client", v1, "--version", "v1", "--activate")
        #expect(first.status == 0, "\(first.error)")
        let noControl = try #require(harness.log.all.first { $0.contains("event=preflight-failed") })
        #expect(noControl.contains("version=v1") && noControl.contains("reason=no-control"), "\(noControl)")
        try harness.wait(for: "agent-ready")
        #expect(try harness.ctl("promote", "client", "v1").status == 0)

        // A later version: the control, v1, fails the same preflight.
        let staged = try harness.ctl("stage", "client", v2, "--version", "v2", "--activate")
        #expect(staged.status == 0, "\(staged.error)")
        #expect(harness.log.all.contains { $0.contains("running content v1 through the same preflight as a control") })
        let judged = try #require(harness.log.all.last { $0.contains("event=preflight-failed") })
        #expect(judged.contains("version=v2") && judged.contains("reason=control-failed"), "\(judged)")
        #expect(judged.contains("cannot judge this agent on this host") && judged.contains("network of its own"), "\(judged)")
        #expect(judged.contains("Connection refused"), "the control's output is quoted: \(judged)")
        #expect(!harness.log.all.contains { $0.contains("event=content-quarantined") })
        try harness.log.wait(for: "event=agent-ready ", after: "Activated content v2", seconds: 30)
        let agent = try harness.agent("client")
        #expect(agent.content.active == "v2" && agent.content.candidate == "v2" && agent.content.quarantined.isEmpty)
        #expect(agent.state == "running")
        let preflight = try #require(agent.lastPreflightFailure)
        #expect(preflight.version == "v2" && preflight.verdict == "control-failed" && preflight.control == "v1")
        #expect(preflight.controlDetail?.contains("exit code 1") == true)
        #expect(try harness.ctl("status", "client").output.contains("Preflight: Content v2 of agent client failed preflight"))
    }
}

/// A TCP service on 127.0.0.1, on a port the kernel picks: connections complete in the
/// kernel's backlog, which is all the test's agents need.
struct LocalService {
    let descriptor: Int32
    let port: UInt16

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(descriptor, pointer, length) == 0 && listen(descriptor, 64) == 0 && getsockname(descriptor, pointer, &length) == 0
            }
        }
        guard bound else {
            let error = POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
            Glibc.close(descriptor)
            throw error
        }
        self.descriptor = descriptor
        port = UInt16(bigEndian: address.sin_port)
    }

    func close() { Glibc.close(descriptor) }
}
