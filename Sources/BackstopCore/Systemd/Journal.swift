import CSystemd
import Foundation
import Logging
import SystemPackage

/// Structured journal entries through `sd_journal_sendv(3)`.
///
/// Never calls the variadic `sd_journal_send`: fields are built as `KEY=value`
/// byte strings and handed over as iovecs whose pointers live only inside the call.
public enum Journal {
    /// syslog(3) priorities, as journald's `PRIORITY=` field takes them.
    public enum Priority: Int, Sendable {
        case emergency = 0, alert, critical, error, warning, notice, info, debug

        /// The swift-log level of the same weight.
        public var logLevel: Logger.Level {
            switch self {
            case .emergency, .alert, .critical: return .critical
            case .error: return .error
            case .warning: return .warning
            case .notice: return .notice
            case .info: return .info
            case .debug: return .debug
            }
        }
    }

    /// Sends one entry made of `fields` (`(NAME, value)`; names `A-Z0-9_`, not starting with `_`).
    /// Values may hold any bytes, newlines included: the native protocol carries them as is.
    /// - Throws: `Errno` from `sd_journal_sendv`. With no journald listening the call
    ///   still returns 0 (the datagram socket is missing and libsystemd drops it).
    public static func send(_ fields: [(String, String)]) throws {
        let encoded = fields.map { Array("\($0.0)=\($0.1)".utf8) }
        _ = try withIOVecs(encoded) { iovecs in
            try SystemdCall.check(sd_journal_sendv(iovecs.baseAddress, Int32(iovecs.count)))
        }
    }

    /// A stream connected to journald (`sd_journal_stream_fd(3)`): every line written to
    /// it becomes an entry with `SYSLOG_IDENTIFIER=identifier` and `priority`, unless the
    /// line starts with a `<N>` prefix (sd-daemon(3)), as under systemd's services. The
    /// stream protocol carries no fields of our own; the identifier names the agent.
    /// - Returns: the descriptor, owned by the caller.
    /// - Throws: `Errno` from `sd_journal_stream_fd` (no journald, for one).
    public static func streamDescriptor(identifier: String, priority: Priority) throws -> Int32 {
        try SystemdCall.check(sd_journal_stream_fd(identifier, Int32(priority.rawValue), 1))
    }

    /// systemd-journald's Varlink socket (systemd-journald(8), "Varlink interface"), root only.
    public static let varlinkSocketPath = "/run/systemd/journal/io.systemd.journal"

    /// The persistent journal's directory, `/var/log/journal/<machine ID>`.
    public static let persistentDirectoryRoot = "/var/log/journal"

    /// Has every entry journald has received so far written to disk, as `journalctl --sync`
    /// does, without a process of its own: journald otherwise syncs only every
    /// `SyncIntervalSec=` (5 minutes) or on an entry of priority critical or higher, and a
    /// kernel panic in between loses what came before. First the Varlink call `journalctl
    /// --sync` makes (`io.systemd.Journal.Synchronize`, systemd 248 and later), which returns
    /// once journald has written every message queued before it into its files; then an
    /// fsync(2) of the active journal files in the persistent journal's directory (and of the
    /// directory), because journald up to systemd 253 syncs them in a thread of its own that
    /// the next entry cancels, and returns before it is done. Returns at once when no journald
    /// listens on the socket (no journald, or one before 248).
    /// - Parameter timeoutSeconds: how long to wait for journald's reply.
    /// - Throws: ``ControlClient/ClientError`` when journald does not answer in time or refuses
    ///   (the call needs root), ``Varlink/RemoteError`` for an error reply, or `Errno` from
    ///   fsync(2).
    public static func synchronize(timeoutSeconds: Int = 5) throws {
        guard access(varlinkSocketPath, F_OK) == 0 else { return }
        do {
            _ = try ControlClient(path: varlinkSocketPath, replyTimeoutSeconds: timeoutSeconds)
                .callRaw("io.systemd.Journal.Synchronize", [String: String]())
        } catch ControlClient.ClientError.daemonNotRunning {
            // A socket left behind by a journald that is gone: nothing to sync.
            return
        }
        var machine = sd_id128_t()
        guard sd_id128_get_machine(&machine) >= 0 else { return }
        let directory = persistentDirectoryRoot + "/" + BootID.hex(machine)
        // Only the active files change; archived ones (system@...journal) were synced when archived.
        let active = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter {
            $0.hasSuffix(".journal") && !$0.contains("@")
        }
        for path in active.map({ directory + "/" + $0 }) + (active.isEmpty ? [] : [directory]) {
            let descriptor = open(path, O_RDONLY | O_CLOEXEC)
            guard descriptor >= 0 else { continue }
            defer { close(descriptor) }
            // journald writes through a shared mapping: fsync writes its dirty pages too.
            guard fsync(descriptor) == 0 else { throw Errno(rawValue: errno) }
        }
    }

    /// Whether a journald is listening on this machine (its native socket exists).
    public static var isAvailable: Bool {
        access("/run/systemd/journal/socket", F_OK) == 0
    }

    private static func withIOVecs<R>(_ buffers: [[UInt8]], _ body: (UnsafeBufferPointer<iovec>) throws -> R) rethrows -> R {
        var storage = buffers
        return try withPointers(&storage[...], collected: []) { iovecs in
            try iovecs.withUnsafeBufferPointer(body)
        }
    }

    /// Pins every buffer for the duration of `body` (recursion keeps each pointer valid).
    private static func withPointers<R>(
        _ remaining: inout ArraySlice<[UInt8]>, collected: [iovec], _ body: ([iovec]) throws -> R
    ) rethrows -> R {
        guard let first = remaining.indices.first else { return try body(collected) }
        var rest = remaining.dropFirst()
        return try remaining[first].withUnsafeMutableBytes { bytes in
            try withPointers(&rest, collected: collected + [iovec(iov_base: bytes.baseAddress, iov_len: bytes.count)], body)
        }
    }
}

extension EventKind {
    /// The stable 128-bit `MESSAGE_ID` of this kind, explained in `systemd/backstop.catalog`.
    public var messageID: String {
        switch self {
        case .agentStarted: return "3779c815a11144f9b68c16a43821d003"
        case .agentReady: return "101f2ec66e0b40dba181ffc41f558fa8"
        case .agentExited: return "99cef853a3ee405a8679ceb3868b5053"
        case .agentHung: return "a6defac842434c6a91722fc36b6a6eb4"
        case .crashLoop: return "474ab4d3d39e41cc88e14a005e916462"
        case .bootAssessed: return "1703bae67279487880f700baaec94068"
        case .rollback: return "f45054b21e1940789f715ad550c3679d"
        case .contentStaged: return "c5effd595d3243ea813b452e18e61ea0"
        case .contentActivated: return "4cde40c1e0394163b87ee46ccdc1cc57"
        case .contentPromoted: return "0d06aad73cfc4732b6b77b477fbf389f"
        case .contentQuarantined: return "344c5acf468c44bda2179b63e84266f0"
        case .contentReleased: return "c441371ae93c49a69ecb70355b947299"
        case .preflightFailed: return "d84638e69a5142baa3382d1f67fd25fa"
        case .safeMode: return "87863389ffe946a09aad991bc9ee777f"
        case .gaveUp: return "e782d6df402649abb18bf9913a0d61f7"
        }
    }

    /// The priority an operator expects: a rollback warns, giving up is critical.
    public var priority: Journal.Priority {
        switch self {
        case .agentStarted, .agentReady, .contentStaged, .contentActivated, .bootAssessed: return .info
        case .contentPromoted, .contentReleased: return .notice
        case .agentExited, .agentHung, .rollback, .contentQuarantined, .preflightFailed: return .warning
        case .crashLoop, .safeMode: return .error
        case .gaveUp: return .critical
        }
    }
}

extension Decision {
    /// The kind's priority, except that a failed boot or a boot loop warns, and for exits: one Backstop asked for is informational, one
    /// that only restarts the agent (a clean exit, an outside kill) a notice, one that needs
    /// the operator to fix the setup (exec-failed, daemonized) an error.
    public var priority: Journal.Priority {
        if event == .bootAssessed, reason == "failed" || reason == "boot-loop" || reason == EscalationReason.rollbackDidNotHelp.rawValue {
            return .warning
        }
        guard event == .agentExited else { return event.priority }
        guard let reason else { return .info }
        switch FailureReason(rawValue: reason)?.attribution(cleanExitIsFailure: false) {
        case .restartOnly?: return .notice
        case .configuration?: return .error
        case .content?, nil: return event.priority
        }
    }

    /// The journal fields of this decision (SPEC.md, Journal).
    public var journalFields: [(String, String)] {
        var fields: [(String, String)] = [
            ("MESSAGE", message),
            ("MESSAGE_ID", event.messageID),
            ("PRIORITY", String(priority.rawValue)),
            ("SYSLOG_IDENTIFIER", "backstopd"),
            ("BACKSTOP_EVENT", event.rawValue),
            ("BACKSTOP_AGENT", agent),
        ]
        func add(_ name: String, _ value: String?) {
            if let value { fields.append((name, Self.singleLine(value))) }
        }
        add("BACKSTOP_CONTENT_VERSION", version)
        add("BACKSTOP_PREVIOUS_VERSION", previousVersion)
        add("BACKSTOP_EXIT_STATUS", exitStatus.map(String.init))
        add("BACKSTOP_SIGNAL", signal.map(SignalName.of))
        add("BACKSTOP_CORE_DUMPED", coreDumped.map { $0 ? "1" : "0" })
        add("BACKSTOP_FAILURES", failures.map(String.init))
        add("BACKSTOP_BOOT_ID", bootID)
        add("BACKSTOP_REASON", reason)
        return fields
    }

    /// Names and versions never carry newlines into a field.
    static func singleLine(_ value: String) -> String {
        value.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\r", with: " ")
    }
}
