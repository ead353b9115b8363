import ArgumentParser
import BackstopCore
import Foundation

/// `backstopctl`: ask backstopd what it is doing and tell it what to do.
@main
struct BackstopControl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backstopctl",
        abstract: "Query and control the Backstop daemon.",
        version: Backstop.version,
        subcommands: [
            Status.self, Content.self, Stage.self, Activate.self, Promote.self, Rollback.self, Release.self,
            ResetFailed.self, Stop.self, Start.self, Boots.self, History.self, Manifest.self, Sign.self, Sandbox.self,
        ])

    /// Lets the shared options (`--config PATH`, `--no-pager`) stand before the verb too
    /// (`backstopctl --config X status`), as systemctl's do; the parser only reads them after it.
    static func main() {
        TOMLProbe.answerIfAsked()
        var arguments = Array(CommandLine.arguments.dropFirst())
        var leading: [String] = []
        while let first = arguments.first, ["--config", "--no-pager"].contains(first) || first.hasPrefix("--config=") {
            leading.append(arguments.removeFirst())
            if first == "--config", !arguments.isEmpty { leading.append(arguments.removeFirst()) }
        }
        // `--boot` alone means the current boot (journalctl's `--boot[=ID]`).
        arguments = arguments.enumerated().map { index, argument in
            guard argument == "--boot" else { return argument }
            let next = index + 1 < arguments.count ? arguments[index + 1] : ""
            return History.bootID(next) != nil || next == "0" ? argument : "--boot=0"
        }
        var verbLength = 0
        while verbLength < arguments.count, !arguments[verbLength].hasPrefix("-"),
            verbLength == 0 || (arguments[0] == "content" && verbLength == 1)
        {
            verbLength += 1
        }
        main(Array(arguments[..<verbLength]) + leading + Array(arguments[verbLength...]))
    }
}

/// Options every verb shares.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "The configuration file (for the runtime and state directories).")
    var config = BackstopCore.Configuration.defaultPath

    /// Accepted as systemctl's is; backstopctl never starts a pager.
    @Flag(name: .long, help: "Do not pipe output into a pager (backstopctl never does).")
    var noPager = false

    /// The configuration file, or when it does not load, the last copy of it that backstopd
    /// ran with (said on stderr): the daemon runs on that one, so its sockets are found through it.
    /// A `[daemon]` table edited since backstopd loaded the file applies only at its restart
    /// (a reload refuses it): while nothing listens on the file's socket but on the last good
    /// copy's, that copy's directories are the daemon's.
    func load() throws -> BackstopCore.Configuration {
        var effective: EffectiveConfiguration
        do { effective = try EffectiveConfiguration.load(path: config) } catch {
            throw failure("\(error)")
        }
        if let problem = effective.problem { FileHandle.standardError.write(Data("backstopctl: warning: \(problem)\n".utf8)) }
        if let running = (try? LastGoodConfiguration.read(for: config))?.flatMap({ try? BackstopCore.Configuration.parse($0.text, path: config) })?.daemon,
           running != effective.configuration.daemon, !Self.listens(effective.configuration.daemon), Self.listens(running) {
            FileHandle.standardError.write(Data("backstopctl: warning: [daemon] in \(config) is not what backstopd runs with yet (that takes systemctl restart backstopd); using its runtime directory \(running.runtimeDirectory)\n".utf8))
            effective.configuration.daemon = running
        }
        return effective.configuration
    }

    /// Whether a daemon's control socket is there in `daemon`'s runtime directory.
    private static func listens(_ daemon: DaemonConfiguration) -> Bool {
        var info = stat()
        return stat(daemon.controlSocketPath, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK
    }

    /// A client for quick calls (15 s for a reply).
    func client() throws -> ControlClient {
        ControlClient(path: try load().daemon.controlSocketPath)
    }

    /// A client for calls that copy or verify content (10 min for a reply).
    func slowClient() throws -> ControlClient {
        ControlClient(path: try load().daemon.controlSocketPath, replyTimeoutSeconds: 600)
    }
}

/// The `AGENT ID` arguments of the verbs that act on one version.
struct VersionTarget: ParsableArguments {
    @OptionGroup var options: GlobalOptions
    @Argument var agent: String
    @Argument var version: String

    /// Calls `method` with `agent` and `version` (allowing for verification of the content).
    func call(_ method: String) throws {
        try perform { try options.slowClient().call(method, ["agent": agent, "version": version]) }
    }
}

/// For read-only verbs: asks the daemon, and when it is not running says so on stderr
/// and reads what it saved instead; what it saved but cannot be read (a user other than
/// root, a damaged file) is said and exits 4, never shown as nothing. Other errors are
/// handled as ``perform(_:)`` does.
func askOrReadSaved<T>(_ shown: String, ask: () throws -> T, saved: () throws -> T) throws -> T {
    try perform {
        do { return try ask() } catch ControlClient.ClientError.daemonNotRunning {
            FileHandle.standardError.write(Data("backstopctl: backstopd is not running; \(shown)\n".utf8))
            do { return try saved() } catch {
                FileHandle.standardError.write(Data("backstopctl: \(error)\n".utf8))
                throw ExitCode(4)
            }
        }
    }
}

/// Prints `backstopctl: message` on stderr and returns exit code 1 to throw.
func failure(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("backstopctl: \(message)\n".utf8))
    return ExitCode(1)
}

/// Runs a call, turning errors into a message and an exit code: 3 when the daemon is
/// not running, 4 when it could not be asked (as LSB's "status unknown"), 1 otherwise.
func perform<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let error as ControlClient.ClientError {
        FileHandle.standardError.write(Data("backstopctl: \(error)\n".utf8))
        if case .daemonNotRunning = error { throw ExitCode(3) }
        throw ExitCode(4)
    } catch let error as Varlink.RemoteError {
        FileHandle.standardError.write(Data("backstopctl: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the daemon, the boot and each agent. Exit 0 healthy, 1 degraded, 3 daemon not running, 4 unknown (no readable configuration, or the daemon did not answer).")

    @OptionGroup var options: GlobalOptions
    @Argument(help: "Only this agent.") var agent: String?
    @Flag(name: .long, help: "Print JSON.") var json = false

    func run() throws {
        let configuration: BackstopCore.Configuration
        // Said on stderr by load(); for a monitoring script the status is unknown (LSB's 4), not degraded.
        do { configuration = try options.load() } catch { throw ExitCode(4) }
        let shown = FileManager.default.fileExists(atPath: configuration.daemon.stateDirectory)
            ? "showing the state saved in \(configuration.daemon.stateDirectory)" : "no state has been saved yet"
        let report = try askOrReadSaved(shown) {
            try ControlClient(path: configuration.daemon.controlSocketPath)
                .call("GetStatus", ["agent": agent], as: StatusReport.self)
        } saved: {
            var (report, problems) = StatusReport.fromStateFiles(configuration)
            if let agent { report.agents = report.agents.filter { $0.name == agent } }
            for problem in problems { FileHandle.standardError.write(Data("backstopctl: \(problem)\n".utf8)) }
            return report
        }
        if json {
            print(String(decoding: try JSONEncoder.backstop.encode(report), as: UTF8.self))
        } else {
            print(StatusText.render(report, colour: isatty(STDOUT_FILENO) == 1), terminator: "")
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}

struct Content: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Content versions.", subcommands: [List.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List an agent's content versions, oldest first.")
        @OptionGroup var options: GlobalOptions
        @Argument var agent: String
        @Flag(name: .long, help: "Print JSON.") var json = false
        @Flag(name: .long, help: "Leave out the column headings.") var noLegend = false

        struct Reply: Codable { var versions: [VersionRecord] }

        func run() throws {
            let configuration = try options.load()
            guard let agentConfiguration = configuration.agent(named: agent) else {
                throw failure("no agent \"\(agent)\" is configured in \(configuration.path)")
            }
            let store = ContentStore(stateDirectory: configuration.daemon.stateDirectory, agent: agentConfiguration.name)
            let ledger = try askOrReadSaved("showing the state saved in \(store.stateFile)") {
                let client = ControlClient(path: configuration.daemon.controlSocketPath)
                let reply = try client.call("ListContent", ["agent": agent], as: Reply.self)
                let status = try client.call("GetStatus", ["agent": agent], as: StatusReport.self)
                return ContentLedger(versions: reply.versions, active: status.agents.first?.content.active)
            } saved: {
                try AgentStateFile.load(path: store.stateFile)?.ledger ?? ContentLedger()
            }
            if json {
                print(String(decoding: try JSONEncoder.backstop.encode(Reply(versions: ledger.versions)), as: UTF8.self))
                return
            }
            print(StatusText.versionTable(ledger.versions, active: ledger.active, legend: !noLegend), terminator: "")
        }
    }
}

struct Sandbox: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the effective sandbox of an agent, and what was not applied and why.",
        discussion: """
            Worked out from the configuration file for the agent's engine: bubblewrap for an agent \
            backstopd runs itself, unit settings for runner = "systemd". With --drop-in, prints the \
            unit's drop-in (with --install-root, writes it below that directory instead).
            """)
    @OptionGroup var options: GlobalOptions
    @Argument var agent: String
    @Flag(name: .long, help: "Print the systemd drop-in for the agent's unit.") var dropIn = false
    @Option(name: .long, help: "With --drop-in: write it to DIR/etc/systemd/system/UNIT.d/ (DIR is / or a DESTDIR).")
    var installRoot: String?

    func run() throws {
        let configuration = try options.load()
        guard let agentConfiguration = configuration.agent(named: agent) else {
            throw failure("no agent \"\(agent)\" is configured in \(configuration.path)")
        }
        if let unit = agentConfiguration.transientUnit {
            guard !dropIn, installRoot == nil else {
                throw failure("agent \(agent) runs as the transient unit \(unit), whose sandbox is set at each start; a drop-in is for an agent's own unit")
            }
            let sandbox = UnitSandbox(
                spec: agentConfiguration.sandbox, unit: unit, stateDirectory: configuration.daemon.stateDirectory,
                runtimeDirectory: configuration.daemon.runtimeDirectory, isTransient: true)
            print(sandbox.settings().report.text, terminator: "")
            printObstacle(configuration)
            return
        }
        guard let unit = agentConfiguration.unit else {
            if dropIn || installRoot != nil {
                throw failure("agent \(agent) is run by backstopd itself (runner = \"direct\"); a drop-in is for an agent's unit")
            }
            let sandbox: BubblewrapSandbox
            do { sandbox = try BubblewrapSandbox(agent: agentConfiguration, daemon: configuration.daemon) } catch {
                throw failure("agent \(agent) cannot be sandboxed, so it does not start: \(error)")
            }
            var (arguments, report) = sandbox.plan(agentConfiguration.exec)
            if let reason = BubblewrapSandbox.unavailableReason { report.skip("everything", reason + "; the agent does not start") }
            print(report.text + "command:\n  " + arguments.map(Self.shellWord).joined(separator: " "))
            printObstacle(configuration)
            return
        }
        let sandbox = UnitSandbox(
            spec: agentConfiguration.sandbox, unit: unit, stateDirectory: configuration.daemon.stateDirectory,
            runtimeDirectory: configuration.daemon.runtimeDirectory)
        if let installRoot {
            guard dropIn else { throw failure("--install-root goes with --drop-in") }
            let path = UnitSandbox.dropInPath(unit: unit, root: installRoot)
            do {
                try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try sandbox.dropIn().write(toFile: path, atomically: true, encoding: .utf8)
            } catch {
                throw failure("cannot write \(path): \(error.localizedDescription)")
            }
            print("Wrote \(path); run `systemctl daemon-reload` and restart \(unit) for it to apply.")
            return
        }
        if dropIn {
            print(sandbox.dropIn(), terminator: "")
            return
        }
        var report = sandbox.settings().report
        let path = UnitSandbox.dropInPath(unit: unit)
        switch try? String(contentsOfFile: path, encoding: .utf8) {
        case sandbox.dropIn():
            report.apply("drop-in", "\(path) installed and up to date (systemd applies it at the unit's next start)")
        case nil:
            report.skip("everything", "\(path) is not installed, so \(unit) runs without this sandbox: `backstopctl sandbox \(agent) --drop-in --install-root /`, then `systemctl daemon-reload`")
        default:
            report.skip("everything", "\(path) differs from the configuration: write it again with `backstopctl sandbox \(agent) --drop-in --install-root /`")
        }
        print(report.text, terminator: "")
    }

    /// What the agent's last failures' output showed in its way, and the setting to open, from
    /// the daemon, or the saved state when it does not answer; nothing when neither can be read.
    func printObstacle(_ configuration: BackstopCore.Configuration) {
        let status = (try? ControlClient(path: configuration.daemon.controlSocketPath)
            .call("GetStatus", ["agent": agent], as: StatusReport.self)) ?? StatusReport.fromStateFiles(configuration).0
        guard let found = status.agents.first(where: { $0.name == agent }), let text = StatusText.obstacle(of: found) else { return }
        print(text, terminator: "")
    }

    /// `word` as a shell would need it written.
    static func shellWord(_ word: String) -> String {
        let plain = !word.isEmpty && word.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "/-_.,=:+@%".unicodeScalars.contains($0) }
        return plain ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

struct Stage: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a content bundle into the store and verify it.",
        discussion: "A bundle is a directory or a tar archive (plain, gzip, xz or zstd), with an optional manifest and signature in .backstop/ (see `backstopctl sign`). backstopctl opens it as you, in your mount namespace (a path in your private /tmp works), and passes it open to backstopd, which reads only through it.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The agent, as named in the configuration.") var agent: String
    @Argument(help: "The bundle: a content directory, or a tar archive whose top is the content (tar -C DIR .).") var bundle: String
    @Option(name: .long, help: "The version id (default: derived from the SHA-256 of the tree).") var version: String?
    @Flag(name: .long, help: "Activate the version once staged.") var activate = false

    struct Parameters: Codable {
        var agent: String
        var path: String
        var fileDescriptor: Int
        var version: String?
        var activate: Bool

        enum CodingKeys: String, CodingKey {
            case agent, path, version, activate
            case fileDescriptor = "file_descriptor"
        }
    }
    struct Reply: Codable { var version: VersionRecord }

    /// Opens the bundle here, as the caller, and sends the open descriptor with the call:
    /// backstopd, in a mount namespace of its own, reads only through it.
    func run() throws {
        let path = URL(fileURLWithPath: bundle).standardizedFileURL.path
        let opened: OpenBundle
        do { opened = try OpenBundle.open(path) } catch { throw failure("\(error)") }
        defer { opened.close() }
        let reply = try perform {
            try options.slowClient().call(
                "Stage", Parameters(agent: agent, path: path, fileDescriptor: 0, version: version, activate: activate),
                sending: [opened.descriptor], as: Reply.self)
        }
        let files = reply.version.fileCount == 1 ? "1 file" : "\(reply.version.fileCount) files"
        print("Staged \(reply.version.id) for \(agent) (\(files), sha256 \(reply.version.digest))\(activate ? "; activated" : "").")
    }
}

struct Manifest: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the manifest of a content directory into its .backstop/manifest.",
        discussion: "Lists every file with its SHA-256 and size, every symlink and every empty directory. Sign it with `backstopctl sign` or `openssl pkeyutl -sign -rawin`. A signature left from before is removed.")
    @Argument(help: "The content directory.") var directory: String

    func run() throws {
        let manifest: BundleManifest
        do { manifest = try BundleManifest.write(into: directory, signingKey: nil) } catch { throw failure("\(error)") }
        print("Wrote \(Sign.metadataPath(directory))/\(BundleManifest.manifestName) (\(manifest.files.count) files).")
    }
}

struct Sign: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write and sign the manifest of a content directory (.backstop/manifest and .backstop/manifest.sig).",
        discussion: "KEY is an Ed25519 private key in PEM, as `openssl genpkey -algorithm ed25519 -out KEY` makes it; hosts trust its public key (`openssl pkey -in KEY -pubout`) as a *.pem file in /etc/backstop/keys/.")
    @Argument(help: "The content directory.") var directory: String
    @Option(name: .long, help: "The Ed25519 private key (PEM).") var key: String

    func run() throws {
        guard let text = try? String(contentsOfFile: key, encoding: .utf8) else { throw failure("\(key): cannot be read") }
        let manifest: BundleManifest
        switch Result(catching: { () throws(StoreError) in try SigningKey.privateKey(pem: text) }) {
        case .failure(let error): throw failure("\(key): \(error)")
        case .success(let signingKey):
            do { manifest = try BundleManifest.write(into: directory, signingKey: signingKey) } catch { throw failure("\(error)") }
        }
        let metadata = Self.metadataPath(directory)
        print("Wrote \(metadata)/\(BundleManifest.manifestName) (\(manifest.files.count) files) and \(metadata)/\(BundleManifest.signatureName).")
    }
}

extension Sign {
    /// `DIR/.backstop`, without a doubled slash.
    static func metadataPath(_ directory: String) -> String {
        (directory.hasSuffix("/") ? String(directory.dropLast()) : directory) + "/" + BundleManifest.directoryName
    }
}

struct Activate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make a staged version active; it starts its probation.")
    @OptionGroup var target: VersionTarget

    func run() throws {
        try target.call("Activate")
        print("Activated \(target.version) for \(target.agent).")
    }
}

struct Promote: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mark a version known-good now, ending its probation.")
    @OptionGroup var target: VersionTarget

    func run() throws {
        try target.call("Promote")
        print("Promoted \(target.version) of \(target.agent) to known-good.")
    }
}

struct Rollback: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make the last known-good version (or --to ID) active again.")
    @OptionGroup var options: GlobalOptions
    @Argument var agent: String
    @Option(name: .long, help: "The version to return to.") var to: String?

    struct Reply: Codable { var version: String? }

    func run() throws {
        let reply = try perform { try options.slowClient().call("Rollback", ["agent": agent, "to": to], as: Reply.self) }
        print("Rolled \(agent) back to \(reply.version ?? to ?? "its last known-good version").")
    }
}

struct Release: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Lift a version's quarantine so it can be activated again.")
    @OptionGroup var target: VersionTarget

    func run() throws {
        try target.call("Release")
        print("Released \(target.version) of \(target.agent) from quarantine.")
    }
}

struct ResetFailed: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset-failed",
        abstract: "Clear failures and the degraded mark; a given-up agent starts again. Quarantines stay.")
    @OptionGroup var options: GlobalOptions
    @Argument var agent: String?

    func run() throws {
        try perform { try options.client().call("ResetFailed", ["agent": agent]) }
        print("Reset \(agent ?? "all agents").")
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop an agent and keep it stopped (across daemon restarts and reboots) until `start`.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The agent's name, as in the configuration.") var agent: String

    func run() throws {
        // Requests are applied in order: this one may wait for a verification before it.
        try perform { try options.slowClient().call("Stop", ["agent": agent]) }
        print("Stopped \(agent); it stays stopped until `backstopctl start \(agent)`.")
    }
}

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start an agent now: after `stop`, during a restart delay, or after Backstop gave up on it.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The agent's name, as in the configuration.") var agent: String

    struct Reply: Codable { var state: String; var reason: String? }

    func run() throws {
        let reply = try perform { try options.slowClient().call("Start", ["agent": agent], as: Reply.self) }
        switch reply.state {
        case "starting": print("Started \(agent).")
        case "running": print("\(agent) is already running; nothing to start.")
        case "stopped": print("\(agent) has no content to start; stage and activate a version.")
        default: print("\(agent) was not started: it is \(reply.state)\(reply.reason.map { " (\($0))" } ?? "").")
        }
    }
}

struct History: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show Backstop's decisions from the journal, oldest first.",
        discussion: "Reads the journal with the sd-journal API; needs read access to it (root, or group systemd-journal or adm).")

    /// Accepted like every verb's; the journal does not depend on the configuration.
    @OptionGroup var options: GlobalOptions
    @Argument(help: "Only this agent's decisions.") var agent: String?
    @Option(name: [.customShort("n"), .customLong("lines")], help: "Only the last N decisions.") var lines: Int?
    @Option(name: .long, help: "Only this boot: a 32-hex boot ID, or 0 (the default for --boot alone) for the current one.")
    var boot: String?
    @Option(name: [.customShort("D"), .long], help: "Read the journal files in this directory (as journalctl -D).")
    var directory: String?
    @Flag(name: .long, help: "One JSON object per line, with the BACKSTOP_ fields.") var json = false

    /// A boot ID in 32 hex digits, also accepted with dashes (as /proc/sys/kernel/random/boot_id has it).
    static func bootID(_ text: String) -> String? {
        let digits = text.replacingOccurrences(of: "-", with: "").lowercased()
        return digits.count == 32 && digits.allSatisfy(\.isHexDigit) ? digits : nil
    }

    func validate() throws {
        if let lines, lines < 1 { throw ValidationError("-n must be at least 1") }
        if let boot, boot != "0", Self.bootID(boot) == nil {
            throw ValidationError("--boot takes a boot ID (32 hex digits) or 0 for the current boot")
        }
    }

    func run() throws {
        if let directory, !FileManager.default.fileExists(atPath: directory) {
            throw failure("\(directory): no such directory")
        }
        let bootID = try boot.map { $0 == "0" ? try BootID.current() : Self.bootID($0)! }
        let entries: [JournalEntry]
        do {
            entries = try JournalReader(directory: directory).decisions(agent: agent, bootID: bootID, limit: lines)
        } catch {
            FileHandle.standardError.write(Data("backstopctl: cannot read the journal\(directory.map { " in \($0)" } ?? ""): \(error)\n".utf8))
            throw ExitCode(1)
        }
        // On stderr, so that --json's stdout stays JSON lines (none here).
        if entries.isEmpty {
            let hint = directory == nil && !FileManager.default.fileExists(atPath: "/run/systemd/journal/socket")
                ? " (no journald runs here: backstopd then writes its decisions to its standard error)" : ""
            FileHandle.standardError.write(Data("-- No entries --\(hint)\n".utf8))
        }
        for entry in entries {
            print(json ? HistoryText.json(entry) : HistoryText.line(entry))
        }
    }
}

struct Boots: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the recent boots, their state and the versions active in them.")
    @OptionGroup var options: GlobalOptions
    @Flag(name: .long, help: "Print JSON.") var json = false
    @Flag(name: .long, help: "Leave out the column headings.") var noLegend = false

    struct Reply: Codable { var boots: [BootRecord] }

    func run() throws {
        let configuration = try options.load()
        let stateDirectory = configuration.daemon.stateDirectory
        let boots = try askOrReadSaved("showing the boots saved in \(BootLog.path(stateDirectory: stateDirectory))") {
            try ControlClient(path: configuration.daemon.controlSocketPath)
                .call("ListBoots", [String: String](), as: Reply.self).boots
        } saved: {
            try BootLog.load(stateDirectory: stateDirectory).boots
        }
        if json {
            print(String(decoding: try JSONEncoder.backstop.encode(Reply(boots: boots)), as: UTF8.self))
            return
        }
        print(StatusText.bootTable(boots, current: try? BootID.current(), legend: !noLegend), terminator: "")
    }
}
