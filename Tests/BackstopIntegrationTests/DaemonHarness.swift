import BackstopCore
import Foundation
import Testing

/// Where the built binaries and the repository are.
enum Paths {
    /// The repository root, from this file's path.
    static let repository: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// `BACKSTOP_BIN_DIR` (set by `make test`), else `.build/debug`.
    static let binaries: String =
        ProcessInfo.processInfo.environment["BACKSTOP_BIN_DIR"] ?? repository + "/.build/debug"

    static func binary(_ name: String) -> String { binaries + "/" + name }

    /// A sample content directory shipped in `examples/content`.
    static func sample(_ name: String) -> String { repository + "/examples/content/" + name }
}

/// Collects a process's output lines and lets a test wait for one, without polling.
final class LineCollector: @unchecked Sendable {
    // @unchecked: `lines` and `partial` are only touched with `condition` locked.
    private let condition = NSCondition()
    private var lines: [String] = []
    private var partial = Data()
    private var closed = false

    func attach(_ pipe: Pipe) {
        pipe.fileHandleForReading.readabilityHandler = { [self] handle in
            let data = handle.availableData
            condition.lock()
            if data.isEmpty {
                closed = true
                handle.readabilityHandler = nil
            }
            partial.append(data)
            while let newline = partial.firstIndex(of: 0x0A) {
                lines.append(String(decoding: partial[partial.startIndex..<newline], as: UTF8.self))
                partial = Data(partial[(newline + 1)...])
            }
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Adds an sd_notify(3) message as one line of its `NAME=value` assignments, space-separated
    /// (what a notify socket, rather than a pipe, delivers).
    func append(_ message: NotifyMessage) {
        condition.lock()
        lines.append(message.assignments.map { "\($0.0)=\($0.1)" }.joined(separator: " "))
        condition.broadcast()
        condition.unlock()
    }

    /// Forgets the lines so far (a new source is attached next).
    func reset() {
        condition.lock()
        lines = []
        partial = Data()
        condition.unlock()
    }

    var all: [String] {
        condition.lock()
        defer { condition.unlock() }
        return lines
    }

    /// Waits until `holds` is true of the lines so far.
    /// - Throws: ``HarnessError/timeout(_:)`` after `seconds`, naming `what`.
    func wait(_ what: String, seconds: Double, until holds: ([String]) -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        condition.lock()
        defer { condition.unlock() }
        while !holds(lines) {
            guard condition.wait(until: deadline) else {
                throw HarnessError.timeout("\(what); saw:\n" + lines.suffix(40).joined(separator: "\n"))
            }
        }
    }

    /// Waits until `count` lines contain `text` (counting only lines after the first
    /// one that contains `marker`, when given).
    /// - Throws: ``HarnessError/timeout(_:)`` after `seconds`.
    func wait(for text: String, count: Int = 1, after marker: String? = nil, seconds: Double) throws {
        let deadline = Date().addingTimeInterval(seconds)
        condition.lock()
        defer { condition.unlock() }
        func matches() -> Int {
            var candidates = lines[...]
            if let marker {
                guard let start = lines.firstIndex(where: { $0.contains(marker) }) else { return 0 }
                candidates = lines[(start + 1)...]
            }
            return candidates.filter { $0.contains(text) }.count
        }
        while matches() < count {
            guard condition.wait(until: deadline) else {
                throw HarnessError.timeout("\(count) line(s) with \"\(text)\"; saw:\n" + lines.suffix(40).joined(separator: "\n"))
            }
        }
    }
}

enum HarnessError: Error, CustomStringConvertible {
    case timeout(String)
    case failed(String)

    var description: String {
        switch self {
        case .timeout(let what): return "timed out waiting for \(what)"
        case .failed(let what): return what
        }
    }
}

/// A real backstopd in a temporary directory, with its own configuration,
/// state and runtime directories, driven through the real backstopctl.
final class DaemonHarness: @unchecked Sendable {
    // @unchecked: used from one test at a time (the suites are serialized).
    let directory: String
    let configPath: String
    private(set) var process: Process?
    private(set) var log = LineCollector()
    private var exited = DispatchSemaphore(value: 0)

    /// The sandbox of test agents that do not bring their own: root, writing their markers
    /// anywhere in the temporary directory their fixtures are in (Backstop's state directory
    /// stays read-only on top); every other setting at its default. SandboxTests prove the defaults.
    static let testSandbox = """
        [agent.sandbox]
        user = "root"
        private_tmp = false
        read_write_paths = ["\(FileManager.default.temporaryDirectory.path)"]
        """

    /// Writes a configuration with `agents` (TOML `[[agent]]` tables, without the header);
    /// an agent without an `[agent.sandbox]` table gets ``testSandbox``.
    init(agents: [String]) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-test-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        configPath = directory + "/backstop.toml"
        try Self.configuration(directory: directory, agents: agents).write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    /// The configuration file's text: the test's directories and `agents`.
    static func configuration(directory: String, agents: [String]) -> String {
        var toml = """
            [daemon]
            state_directory = "\(directory)/state"
            runtime_directory = "\(directory)/run"

            """
        for agent in agents {
            toml += "\n[[agent]]\n" + agent + "\n" + (agent.contains("[agent.sandbox]") ? "" : Self.testSandbox + "\n")
        }
        return toml
    }

    /// A `[[agent]]` body for the demo agent.
    static func demoAgent(name: String = "demo", extra: String = "") -> String {
        """
        name = "\(name)"
        exec = ["\(Paths.binary("backstop-demo-agent"))", "--content", "{content}"]
        failure_window_sec = 60
        \(extra)
        """
    }

    /// Starts backstopd and waits until it serves its control socket.
    /// - Parameters:
    ///   - environment: added to the daemon's environment (what systemd would set).
    ///   - waitUntilRunning: false returns at once, for a test that kills it during its startup.
    /// - Throws: when it cannot be started or does not come up within 20 s.
    func start(environment: [String: String] = [:], waitUntilRunning: Bool = true) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Paths.binary("backstopd"))
        process.arguments = ["--config", configPath]
        process.environment = ProcessInfo.processInfo.environment.merging(serviceEnvironment.merging(environment) { $1 }) { $1 }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        log = LineCollector()
        log.attach(pipe)
        let exited = DispatchSemaphore(value: 0)
        self.exited = exited
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        self.process = process
        if waitUntilRunning { try log.wait(for: "is running", seconds: 20) }
    }

    /// Waits up to `seconds` for the daemon to exit by itself.
    /// - Returns: whether it did.
    func waitForExit(seconds: Double) -> Bool {
        guard let process else { return true }
        guard exited.wait(timeout: .now() + seconds) == .success else { return false }
        process.waitUntilExit()
        return true
    }

    /// Waits for the `count`-th decision of kind `event` in the daemon's log (after the
    /// first decision of kind `after`, when given).
    func wait(for event: String, count: Int = 1, after: String? = nil, seconds: Double = 30) throws {
        try log.wait(for: "event=\(event) ", count: count, after: after.map { "event=\($0) " }, seconds: seconds)
    }

    /// Stops the daemon with SIGTERM and waits for it (SIGKILL after 20 s).
    func stop() {
        guard let process, process.isRunning else { return }
        process.terminate()
        if exited.wait(timeout: .now() + 20) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// SIGKILL to the daemon: a crash, leaving its agent behind.
    func killDaemon() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// What systemd's `StateDirectory=backstop` gives the service: where backstopd keeps the
    /// last configuration that loaded (``LastGoodConfiguration``), here inside the test's directory.
    var serviceEnvironment: [String: String] { ["STATE_DIRECTORY": directory + "/state"] }

    /// The last good copy of the configuration that backstopd keeps.
    var lastGoodFile: String { LastGoodConfiguration.file(environment: serviceEnvironment) }

    /// Runs backstopctl with `--config` and returns its exit code and output.
    @discardableResult
    func ctl(_ arguments: String...) throws -> CommandResult {
        try Command.run(Paths.binary("backstopctl"), arguments + ["--config", configPath], environment: serviceEnvironment)
    }

    /// Replaces the configuration file with `agents` (as ``init(agents:)`` takes them).
    func rewrite(agents: [String]) throws {
        try Self.configuration(directory: directory, agents: agents).write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    /// SIGHUP to backstopd (what `systemctl reload backstopd` sends), then waits for its word on it.
    func reload(expecting outcome: String) throws {
        let said = log.all.filter { $0.contains(outcome) }.count
        kill(try #require(process?.processIdentifier), SIGHUP)
        try log.wait(for: outcome, count: said + 1, seconds: 30)
    }

    /// `backstopctl status --json`, decoded, with its exit code.
    func status() throws -> (report: StatusReport, exitCode: Int32) {
        let result = try ctl("status", "--json")
        do {
            return (try JSONDecoder.backstop.decode(StatusReport.self, from: Data(result.output.utf8)), result.status)
        } catch {
            throw HarnessError.failed("status --json gave no JSON (exit \(result.status)): \(result.output) \(result.error)")
        }
    }

    /// The status of the one agent called `name`.
    func agent(_ name: String = "demo") throws -> StatusReport.Agent {
        try #require(try status().report.agents.first { $0.name == name })
    }

    /// Stages `directory` as `version` and, when asked, activates it; fails the test on error.
    func stage(_ directory: String, as version: String, agent: String = "demo", activate: Bool = true) throws {
        var arguments = ["stage", agent, directory, "--version", version, "--config", configPath]
        if activate { arguments.append("--activate") }
        let result = try Command.run(Paths.binary("backstopctl"), arguments, environment: serviceEnvironment)
        guard result.status == 0 else { throw HarnessError.failed("staging \(version) failed: \(result.error)") }
    }

    /// Stops the daemon and removes the directory (read-only versions included).
    func cleanUp() {
        stop()
        ContentStore.removeTree(directory)
    }
}

/// One reply read from a blocking control-socket connection.
enum VarlinkReply {
    /// The text up to the first NUL; "" when the daemon closes the connection first.
    static func read(from fd: Int32) -> String {
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !reply.contains(0) {
            let count = Glibc.read(fd, &buffer, buffer.count)
            guard count > 0 else { break }
            reply += buffer[..<count]
        }
        return String(decoding: reply.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// What a finished command left: its exit code and its output.
struct CommandResult {
    var status: Int32
    var output: String
    var error: String
}

/// Runs programs to completion.
enum Command {
    /// Runs `path` with `arguments` (and `environment` on top of the test's) and collects stdout and stderr.
    static func run(_ path: String, _ arguments: [String], environment: [String: String] = [:]) throws -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let output = Pipe()
        let error = Pipe()
        process.standardOutput = output
        process.standardError = error
        try process.run()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = error.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return CommandResult(
            status: process.terminationStatus, output: String(decoding: out, as: UTF8.self),
            error: String(decoding: err, as: UTF8.self))
    }
}

/// Whether the tests can run as they must: root (agents, sockets in /run-like places) and built binaries.
enum Environment {
    static var isRoot: Bool { getuid() == 0 }
    static var haveBinaries: Bool { FileManager.default.isExecutableFile(atPath: Paths.binary("backstopd")) }

    /// Whether the built backstopd is a debug build with fault injection (`--version` says so).
    static var haveFaultInjection: Bool {
        haveBinaries && (try? Command.run(Paths.binary("backstopd"), ["--version"]))?.output.contains("fault injection") == true
    }

    /// Whether uid 65534 can execute the built backstopctl at all.
    static var nobodyCanRunBackstopctl: Bool {
        guard isRoot, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else { return false }
        let result = try? Command.run(
            "/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--", Paths.binary("backstopctl"), "--version"])
        return result?.status == 0
    }
}
