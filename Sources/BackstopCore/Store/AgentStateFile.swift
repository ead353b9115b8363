import Foundation

/// The persisted state of one agent: `<state_directory>/<agent>/state.json`.
///
/// Written with ``DurableFile/write(_:to:mode:)`` after every decision. Monotonic
/// readings are only meaningful within the boot that made them, so they are kept
/// with that boot's ID and dropped when the daemon starts in another boot.
public struct AgentStateFile: Codable, Sendable, Equatable {
    /// Bumped when the format changes incompatibly.
    public static let currentSchema = 1

    /// The format version, `schema`; ``load(path:)`` refuses any other than ``currentSchema``.
    public var schema = AgentStateFile.currentSchema
    /// Every content version of the agent and which one is active (`ledger`).
    public var ledger = ContentLedger()
    /// The boot the monotonic readings below belong to (32 hex digits).
    public var bootID: String = ""
    /// Failures inside the window, oldest first; dropped in another boot.
    public var failures: [FailureRecord] = []
    /// Failures since the last healthy run, which set the backoff; reset in another boot.
    public var consecutiveFailures = 0
    /// Healthy seconds the candidate had accumulated; reset in another boot.
    public var probationBankedSeconds: Double = 0
    /// Whether the escalation ladder gave up on the agent; kept across boots.
    public var givenUp = false
    /// Whether the agent runs `exec` or `safe_mode_exec`.
    public var mode: RunMode = .normal
    /// Known-good version ids already tried in the current escalation.
    public var escalationTried: [String] = []
    /// The last rollback, nil if none: `status`'s `last_rollback` and the degraded mark.
    public var lastRollback: RollbackRecord?
    /// When an operator last ran `reset-failed`; rollbacks before it no longer mark the agent degraded.
    public var resetFailedAt: Date?
    /// When the backoff that was running ends (monotonic, same boot).
    public var restartDueMonotonicSeconds: Double?
    /// `backstopctl stop` was run and no `start` since; absent means false.
    public var operatorStopped: Bool?
    /// A rollback did not help and Backstop stopped switching versions; absent means false.
    public var rollbackDidNotHelp: Bool?
    /// The ladder step (safe mode, given up) the agent is on and its evidence; absent when neither.
    public var escalation: EscalationRecord?
    /// A boot loop reported with no candidate to roll back, until `reset-failed`; absent when none.
    public var reportedBootLoop: BootLoopRecord?
    /// The agent crash-loops on its first content (no known-good version to compare with); absent when not.
    public var firstContentFailure: FirstContentFailure?
    /// The last preflight that failed, with its control; absent when none did.
    public var lastPreflightFailure: PreflightFailure?

    public init() {}

    /// Reads the state file.
    /// - Returns: nil when there is none yet.
    /// - Throws: ``StateFileError`` when it exists but cannot be read or decoded.
    public static func load(path: String) throws(StateFileError) -> AgentStateFile? {
        let hint = getuid() == 0 ? "" : " (state files are root's)"
        let present: Bool
        do { present = try DurableFile.exists(path) } catch { throw StateFileError(path: path, message: "cannot read: \(error)\(hint)") }
        guard present else { return nil }
        guard access(path, R_OK) == 0 else {
            throw StateFileError(path: path, message: "cannot read: \(String(cString: strerror(errno)))\(hint)")
        }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw StateFileError(path: path, message: "cannot read: \(error.localizedDescription)")
        }
        return try decode(data, path: path)
    }

    /// Decodes the contents of a state file.
    /// - Parameter path: named in the error.
    /// - Throws: ``StateFileError`` when `data` is not a state file of ``currentSchema``.
    public static func decode(_ data: Data, path: String) throws(StateFileError) -> AgentStateFile {
        do {
            let state = try JSONDecoder.backstop.decode(AgentStateFile.self, from: data)
            guard state.schema == currentSchema else {
                throw StateFileError(path: path, message: "schema \(state.schema) is not supported (expected \(currentSchema))")
            }
            if let key = state.outOfRange {
                throw StateFileError(path: path, message: "\(key) is out of range")
            }
            return state
        } catch let error as StateFileError {
            throw error
        } catch {
            throw StateFileError(path: path, message: "not a valid state file: \(error)")
        }
    }

    /// The first value no daemon could have written, which the timers and the status
    /// would trip over (a reading on the monotonic clock that is negative, not finite or
    /// beyond a century of uptime; a negative count); nil when all are plausible.
    var outOfRange: String? {
        let century = 100 * 365 * 86_400.0
        func plausible(_ seconds: Double) -> Bool { seconds.isFinite && seconds >= 0 && seconds <= century }
        if !plausible(probationBankedSeconds) { return "probationBankedSeconds" }
        if let due = restartDueMonotonicSeconds, !plausible(due) { return "restartDueMonotonicSeconds" }
        if failures.contains(where: { !plausible($0.monotonicSeconds) }) { return "failures.monotonicSeconds" }
        if consecutiveFailures < 0 || consecutiveFailures > 1_000_000 { return "consecutiveFailures" }
        if ledger.versions.contains(where: { $0.fileCount < 0 || $0.totalBytes < 0 }) { return "ledger.versions" }
        return nil
    }

    /// The previous generation of the state file at `path`, kept by ``save(path:)``.
    public static func previousPath(_ path: String) -> String { path + ".prev" }

    /// Writes the state file crash-safely, keeping the generation it replaces as
    /// `state.json.prev`, so that one damaged file never loses the record of which
    /// versions are known-good or quarantined.
    /// - Throws: `Errno` from the file system.
    public func save(path: String) throws {
        try DurableFile.write(try JSONEncoder.backstop.encode(self), to: path, keepingPreviousAt: Self.previousPath(path))
    }
}

/// A state file that exists but cannot be used.
public struct StateFileError: Error, Equatable, CustomStringConvertible {
    /// The state file at fault.
    public var path: String
    /// What is wrong, e.g. `schema 2 is not supported (expected 1)`.
    public var message: String
    /// `PATH: message`.
    public var description: String { "\(path): \(message)" }
}

extension JSONEncoder {
    /// Sorted keys and RFC 3339 dates: stable files and stable wire output.
    public static var backstop: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }
}

extension JSONDecoder {
    /// The counterpart of ``Foundation/JSONEncoder/backstop``.
    public static var backstop: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
