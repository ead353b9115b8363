@testable import BackstopCore
import Foundation
import Testing

/// This machine's own tree booted with a real systemd as PID 1 in systemd-nspawn, with
/// Backstop installed (`make install DESTDIR=...`, laid over /usr) and enabled as a service.
/// State and the journal live in host directories bound into the container, so they survive
/// "reboots" (new container boots, each with its own boot ID, one machine ID).
final class Container: @unchecked Sendable {
    // @unchecked: used from one test at a time (the suite is serialized).

    /// `BACKSTOP_INSTALL_DIR`: the DESTDIR of `make install` (set by `make test`).
    static let installTree = ProcessInfo.processInfo.environment["BACKSTOP_INSTALL_DIR"]

    /// Whether containers can run here: root, systemd-nspawn, and an install tree.
    static var available: Bool {
        Environment.isRoot && FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-nspawn")
            && installTree.map { FileManager.default.isExecutableFile(atPath: $0 + "/usr/sbin/backstopd") } == true
    }

    /// Units of this tree that wait for a network or set it up, which a container without one
    /// never finishes, and the agents of the tests' packages (clamd, crowdsec, fail2ban,
    /// usbguard), which the first boot's presets would enable.
    static let masked = [
        "systemd-networkd-wait-online.service", "clamav-daemon.service", "clamav-freshclam.service", "clamav-clamonacc.service",
        "clamav-freshclam-once.timer", "systemd-resolved.service", "systemd-timesyncd.service",
        "crowdsec.service", "fail2ban.service", "usbguard.service", "usbguard-dbus.service",
    ]

    let directory: String
    let machineID = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
    private var nspawn: Process?
    private var notify: NotifySocket?
    private var followerPipe: Pipe?
    private let leader = LineCollector()
    private(set) var leaderPID: Int32?
    private(set) var boots = 0
    /// The boot ID of the current boot (inside the container).
    private(set) var bootID = ""
    /// `journalctl -f` on the host over the container's persistent journal: Backstop's
    /// entries of every boot, as JSON lines, waited for without polling.
    private var follower: Process?
    let journalLines = LineCollector()

    /// Files (path in the container → text) bound read-only into it, such as unit files in
    /// /etc/systemd/system: the container's /etc starts empty at each boot. Those in
    /// /etc/backstop are written into ``configDirectory`` instead.
    let files: [String: String]
    /// The units masked at boot (`systemd.mask=`).
    let masked: [String]
    /// The host directory bound read-only as the container's /etc/backstop.
    let configDirectory: String

    /// A container whose Backstop configuration is `config` (the TOML text), with `files`
    /// in place and the `masked` units masked. With `config` nil, /etc/backstop is the
    /// install tree's own, as `make install` left it: the shipped backstop.toml, unchanged.
    /// - Throws: when a directory cannot be made or a file written, or for a file in
    ///   /etc/backstop with `config` nil (the install tree is not the test's to change).
    init(config: String?, files: [String: String] = [:], masked: [String] = Container.masked) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-container-\(UUID().uuidString.prefix(8))").path
        let configFiles = files.filter { $0.key.hasPrefix("/etc/backstop/") }
        self.files = files.filter { !$0.key.hasPrefix("/etc/backstop/") }
        self.masked = masked
        configDirectory = config == nil ? Self.installTree! + "/etc/backstop" : directory + "/etc"
        for sub in ["state", "journal", "etc", "files"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + sub, withIntermediateDirectories: true)
        }
        if let config {
            try config.write(toFile: directory + "/etc/backstop.toml", atomically: true, encoding: .utf8)
            for (path, text) in configFiles {
                try text.write(toFile: directory + "/etc/" + path.dropFirst("/etc/backstop/".count), atomically: true, encoding: .utf8)
            }
        } else if let path = configFiles.keys.first {
            throw HarnessError.failed("\(path): the shipped /etc/backstop takes no files of the test's")
        }
        for (index, path) in self.files.keys.sorted().enumerated() {
            try self.files[path]!.write(toFile: directory + "/files/\(index)", atomically: true, encoding: .utf8)
        }
    }

    /// Boots the container and waits until systemd has finished booting it.
    /// - Throws: when it does not come up within 90 s.
    func boot() throws {
        notify?.invalidate()
        let socketPath = directory + "/nspawn.notify"
        unlink(socketPath)
        // systemd-nspawn reports the container's PID 1 as X_NSPAWN_LEADER_PID (sd_notify) and
        // READY=1 once that systemd is up (--notify-ready=yes).
        notify = try NotifySocket(path: socketPath, queue: DispatchQueue(label: "container.notify")) { [leader] message in
            leader.append(message)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/systemd-nspawn")
        var arguments = [
            "-D", "/", "--volatile=yes", "--private-network", "--register=no", "--keep-unit", "--notify-ready=yes",
            "--uuid=\(machineID)", "--overlay-ro=/usr:\(Self.installTree!)/usr:/usr",
            "--bind=\(directory)/state:/var/lib/backstop", "--bind=\(directory)/journal:/var/log/journal/\(machineID)",
            "--bind-ro=\(configDirectory):/etc/backstop",
        ] + files.keys.sorted().enumerated().map { "--bind-ro=\(directory)/files/\($0.offset):\($0.element)" } + [
            "-b", "--",
            "systemd.firstboot=off", "systemd.wants=backstopd.service",
        ]
        arguments += masked.map { "systemd.mask=\($0)" }
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["NOTIFY_SOCKET": socketPath]) { _, new in new }
        // A file, not a pipe: the console output of a whole boot must never block the container.
        let console = directory + "/console-\(boots + 1).log"
        guard FileManager.default.createFile(atPath: console, contents: nil) else { throw HarnessError.failed("cannot create \(console)") }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: console))
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        nspawn = process
        boots += 1
        try leader.wait(for: "X_NSPAWN_LEADER_PID=", count: boots, seconds: 30)
        let line = leader.all.last { $0.contains("X_NSPAWN_LEADER_PID=") }!
        leaderPID = line.split(separator: " ").first { $0.hasPrefix("X_NSPAWN_LEADER_PID=") }
            .flatMap { Int32($0.dropFirst("X_NSPAWN_LEADER_PID=".count)) }
        try leader.wait(for: "READY=1", count: boots, seconds: 90)
        bootID = try run("/bin/cat", "/proc/sys/kernel/random/boot_id").output
            .trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "-", with: "")
        try followJournal()
    }

    /// (Re)starts the follower: journald starts a new file at each boot, which a running
    /// `journalctl -f` does not always pick up, so each boot gets its own from the start.
    private func followJournal() throws {
        stopFollowing()
        journalLines.reset()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/journalctl")
        process.arguments = ["-D", directory + "/journal", "-f", "-n", "all", "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=backstopd"]
        let pipe = Pipe()
        journalLines.attach(pipe)
        followerPipe = pipe
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        follower = process
    }

    /// Runs `arguments` inside the container (nsenter into all its namespaces).
    @discardableResult
    func run(_ arguments: String...) throws -> CommandResult {
        guard let leaderPID else { throw HarnessError.failed("the container is not running") }
        return try Command.run("/usr/bin/nsenter", ["-t", String(leaderPID), "-a"] + arguments)
    }

    /// `backstopctl status --json` inside the container.
    func status() throws -> StatusReport {
        let result = try run("/usr/bin/backstopctl", "status", "--json")
        do { return try JSONDecoder.backstop.decode(StatusReport.self, from: Data(result.output.utf8)) } catch {
            throw HarnessError.failed("status --json inside the container gave no JSON (exit \(result.status)): \(result.output) \(result.error)")
        }
    }

    /// Waits until `holds` is true of backstopd's journal lines (JSON) of the current boot.
    /// - Throws: after `seconds`, with the end of the current boot's journal.
    func waitInBoot(_ what: String, seconds: Double = 60, until holds: ([String]) -> Bool) throws {
        let boot = "\"_BOOT_ID\":\"\(bootID)\""
        do {
            try journalLines.wait("\(what) in boot \(bootID)", seconds: seconds) { lines in holds(lines.filter { $0.contains(boot) }) }
        } catch {
            throw HarnessError.failed("no \(what) within \(Int(seconds)) s; journal:\n\(journal())")
        }
    }

    /// Waits until the current boot holds `count` Backstop decisions of kind `event` (with
    /// `reason` and `version`, when given).
    func waitForDecision(
        _ event: String, reason: String? = nil, version: String? = nil, count: Int = 1, seconds: Double = 60
    ) throws {
        let wanted = ["\"BACKSTOP_EVENT\":\"\(event)\""] + (reason.map { ["\"BACKSTOP_REASON\":\"\($0)\""] } ?? [])
            + (version.map { ["\"BACKSTOP_CONTENT_VERSION\":\"\($0)\""] } ?? [])
        try waitInBoot("\(count) \(event)\(reason.map { " (\($0))" } ?? "")\(version.map { " on \($0)" } ?? "")", seconds: seconds) { lines in
            lines.filter { line in wanted.allSatisfy { line.contains($0) } }.count >= count
        }
    }

    /// Backstop's decisions in boot `offset` (0 the current one, -1 the one before) as JSON objects.
    func decisions(boot offset: Int = 0) throws -> [[String: String]] {
        let result = try run("/bin/journalctl", "-b", String(offset), "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=backstopd")
        return result.output.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }.filter { $0["BACKSTOP_EVENT"] != nil }.map { $0.compactMapValues { $0 as? String } }
    }

    /// The journal of the current boot, for a failing scenario's report.
    func journal() -> String {
        ((try? run("/bin/journalctl", "-b", "--no-pager", "-o", "short-monotonic"))?.output ?? "").split(separator: "\n").suffix(200)
            .joined(separator: "\n")
    }

    /// A power cut: SIGKILL to the container's PID 1; nothing inside gets to shut down.
    func powerCut() {
        guard let leaderPID else { return }
        kill(leaderPID, SIGKILL)
        nspawn?.waitUntilExit()
        self.leaderPID = nil
    }

    /// A clean shutdown: `systemctl poweroff` inside, then wait for the container to end.
    func shutDown() throws {
        try run("/bin/systemctl", "poweroff")
        nspawn?.waitUntilExit()
        leaderPID = nil
    }

    /// Runs `body` with a booted container (see ``init(config:files:masked:)``), removed
    /// afterwards; any failure carries the journal of the boot it happened in.
    static func booted(
        config: String?, files: [String: String] = [:], masked: [String] = Container.masked, _ body: (Container) throws -> Void
    ) throws {
        let container = try Container(config: config, files: files, masked: masked)
        defer { container.remove() }
        try container.boot()
        do { try body(container) } catch {
            throw HarnessError.failed("\(error)\n--- journal of the container's current boot ---\n\(container.journal())")
        }
    }

    /// Ends the container (if it still runs) and removes its directories.
    func remove() {
        powerCut()
        if let nspawn, nspawn.isRunning {
            kill(nspawn.processIdentifier, SIGKILL)
            nspawn.waitUntilExit()
        }
        notify?.invalidate()
        stopFollowing()
        ContentStore.removeTree(directory)
    }

    private func stopFollowing() {
        if let follower, follower.isRunning {
            // SIGKILL: a child of Foundation's Process may start with SIGTERM blocked.
            kill(follower.processIdentifier, SIGKILL)
            follower.waitUntilExit()
        }
        follower = nil
    }
}
