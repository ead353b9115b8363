import CSystemd
import Foundation
import SystemPackage

/// One decision read back from the journal.
public struct JournalEntry: Sendable, Equatable {
    /// `__REALTIME_TIMESTAMP`: when journald received it.
    public var time: Date
    /// `MESSAGE`, `MESSAGE_ID`, `PRIORITY`, `_BOOT_ID` and every `BACKSTOP_` field.
    public var fields: [String: String]

    /// The `BACKSTOP_EVENT` value.
    public var event: String { fields["BACKSTOP_EVENT"] ?? "" }
}

/// Reads Backstop's decisions with the sd-journal API (sd-journal(3)), not by running journalctl.
public final class JournalReader {
    private let journal: OpaquePointer

    /// Opens the local journal (`SD_JOURNAL_LOCAL_ONLY`), or the journal files in
    /// `directory` (as `journalctl -D`).
    /// - Throws: `Errno` from `sd_journal_open(3)` or `sd_journal_open_directory(3)`.
    public init(directory: String? = nil) throws {
        var handle: OpaquePointer?
        if let directory {
            try SystemdCall.check(sd_journal_open_directory(&handle, directory, 0))
        } else {
            try SystemdCall.check(sd_journal_open(&handle, Int32(SD_JOURNAL_LOCAL_ONLY)))
        }
        journal = handle!
    }

    deinit {
        sd_journal_close(journal)
    }

    /// Decisions of `backstopd`, oldest first: those of `agent` only when given, of boot
    /// `bootID` only when given, and the last `limit` only when given.
    /// - Throws: `Errno` from the sd-journal calls.
    public func decisions(agent: String?, bootID: String?, limit: Int?) throws -> [JournalEntry] {
        try addMatch("SYSLOG_IDENTIFIER=backstopd")
        if let agent { try addMatch("BACKSTOP_AGENT=" + agent) }
        if let bootID { try addMatch("_BOOT_ID=" + bootID) }
        var entries: [JournalEntry] = []
        if let limit {
            try SystemdCall.check(sd_journal_seek_tail(journal))
            while entries.count < limit, try SystemdCall.check(sd_journal_previous(journal)) > 0 {
                if let entry = try currentDecision() { entries.append(entry) }
            }
            return entries.reversed()
        }
        try SystemdCall.check(sd_journal_seek_head(journal))
        while try SystemdCall.check(sd_journal_next(journal)) > 0 {
            if let entry = try currentDecision() { entries.append(entry) }
        }
        return entries
    }

    private func addMatch(_ match: String) throws {
        let bytes = Array(match.utf8)
        try SystemdCall.check(sd_journal_add_match(journal, bytes, bytes.count))
    }

    /// The entry under the cursor when it is a decision (it has `BACKSTOP_EVENT`), else nil;
    /// the daemon's other log lines share the identifier.
    private func currentDecision() throws -> JournalEntry? {
        var fields: [String: String] = [:]
        sd_journal_restart_data(journal)
        var data: UnsafeRawPointer?
        var length = 0
        while try SystemdCall.check(sd_journal_enumerate_data(journal, &data, &length)) > 0 {
            guard let data else { continue }
            let field = String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
            guard let equals = field.firstIndex(of: "=") else { continue }
            let name = String(field[..<equals])
            if name.hasPrefix("BACKSTOP_") || ["MESSAGE", "MESSAGE_ID", "PRIORITY", "_BOOT_ID"].contains(name) {
                fields[name] = String(field[field.index(after: equals)...])
            }
        }
        guard fields["BACKSTOP_EVENT"] != nil else { return nil }
        var microseconds: UInt64 = 0
        try SystemdCall.check(sd_journal_get_realtime_usec(journal, &microseconds))
        return JournalEntry(time: Date(timeIntervalSince1970: Double(microseconds) / 1e6), fields: fields)
    }
}
