import Foundation
import SystemPackage

/// Quarantine marks: `<state_directory>/<agent>/quarantine/<id>.json`, one per quarantined
/// version, holding its record (``VersionRecord``, as in the state file). They live beside
/// the versions, outside the state file, so that a quarantine outlives the loss of both
/// generations of the state file: at startup every marked version is quarantined again
/// (``ContentLedger/applyQuarantineMarks(_:hasFiles:at:)``), and none is ever activated
/// without an operator's `release`. A mark is written durably (``DurableFile/write(_:to:mode:keepingPreviousAt:)``)
/// before the state file that records the quarantine, and removed before the state file
/// that records the release, so a crash between the two leaves the version quarantined.
extension ContentStore {
    /// The mark of version `id`.
    public func quarantineMarkPath(_ id: String) -> String { quarantineDirectory + "/" + id + ".json" }

    /// The marks on disk: their records, and the files that are not marks one can read (named for the log).
    /// - Throws: ``StoreError`` when `quarantine/` cannot be opened (a symlink there included).
    public func quarantineMarks() throws(StoreError) -> (marks: [VersionRecord], unreadable: [String]) {
        let directory = try open(quarantineDirectory, creating: true)
        defer { try? directory.close() }
        var marks: [VersionRecord] = []
        var unreadable: [String] = []
        for name in Self.names(in: directory.rawValue).sorted() where name.hasSuffix(".json") {
            let id = String(name.dropLast(".json".count))
            let descriptor = openat(directory.rawValue, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard descriptor >= 0 else {
                unreadable.append(name)
                continue
            }
            let data = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true).readDataToEndOfFile()
            guard Self.isValidVersionID(id), let mark = try? JSONDecoder.backstop.decode(VersionRecord.self, from: data), mark.id == id else {
                unreadable.append(name)
                continue
            }
            marks.append(mark)
        }
        return (marks, unreadable)
    }

    /// Writes the marks of `ledger`'s quarantined versions that are missing (write, fsync,
    /// rename, fsync of `quarantine/`). Called before the state file that records them is written.
    /// - Parameter marked: the ids marked on disk now.
    /// - Returns: the ids marked afterwards.
    /// - Throws: ``StoreError``; the marks written until then stay.
    public func addQuarantineMarks(for ledger: ContentLedger, marked: Set<String>) throws(StoreError) -> Set<String> {
        let missing = ledger.versions.filter { $0.standing == .quarantined && Self.isValidVersionID($0.id) && !marked.contains($0.id) }
        guard !missing.isEmpty else { return marked }
        let directory = try open(quarantineDirectory, creating: true)
        try? directory.close()
        var now = marked
        for record in missing {
            let path = quarantineMarkPath(record.id)
            try Self.syscall(path, "write") { try DurableFile.write(try JSONEncoder.backstop.encode(record), to: path) }
            now.insert(record.id)
        }
        return now
    }

    /// Removes the marks of versions `ledger` does not hold quarantined (released, or
    /// forgotten): unlink, then fsync of `quarantine/`. Called after the state file that
    /// records the release is written, so a crash before leaves the version quarantined.
    /// - Parameter marked: the ids marked on disk now.
    /// - Returns: the ids marked afterwards.
    /// - Throws: ``StoreError``.
    public func removeQuarantineMarks(notIn ledger: ContentLedger, marked: Set<String>) throws(StoreError) -> Set<String> {
        let stale = marked.subtracting(ledger.quarantined)
        guard !stale.isEmpty else { return marked }
        var now = marked
        for id in stale.sorted() {
            let path = quarantineMarkPath(id)
            guard unlink(path) == 0 || errno == ENOENT else { throw .io(path: path, operation: "remove", errno: errno) }
            FaultInjection.step("unlink \(path)")
            now.remove(id)
        }
        try Self.syscall(quarantineDirectory, "fsync") { try DurableFile.syncDirectory(at: quarantineDirectory) }
        return now
    }
}
