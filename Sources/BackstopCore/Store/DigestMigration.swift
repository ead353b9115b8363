import Foundation

extension ContentStore {
    /// What ``migrateDigests(_:)`` did.
    public struct DigestMigration: Sendable, Equatable {
        /// Versions whose digest was checked in the old format and recorded in the current one.
        public var migrated: [String] = []
        /// Versions whose files no longer match the digest they were recorded with: their
        /// record is left as it was, so verification refuses them as damaged.
        public var mismatched: [String] = []
        /// Versions whose files are gone (quarantined versions removed by garbage
        /// collection): their old digest stays, and staging still refuses content with it.
        public var kept: [String] = []
    }

    /// Moves the records of versions whose digest is in an older format
    /// (``TreeDigestFormat/lines``) to the current one, at startup before anything runs.
    ///
    /// A version's id, standing, quarantine and the active link stay as they are: only its
    /// digest and `digest_format` change. The files are read once; the old digest is
    /// checked first, so the new one is recorded only for files that are what was staged.
    /// A daemon stopped in the middle finds the rest still old and does them at its next
    /// start.
    /// - Returns: the versions migrated, those whose files do not match, and those kept.
    public func migrateDigests(_ ledger: inout ContentLedger) -> DigestMigration {
        var result = DigestMigration()
        for record in ledger.versions where (record.digestFormat ?? .lines) != .current {
            guard record.filesRemovedAt == nil, let inventory = try? TreeInventory.scan(path(of: record.id)) else {
                result.kept.append(record.id)
                continue
            }
            guard inventory.digest(record.digestFormat ?? .lines) == record.digest else {
                result.mismatched.append(record.id)
                continue
            }
            ledger.redigest(record.id, digest: inventory.digest(.current), format: .current)
            result.migrated.append(record.id)
        }
        return result
    }
}
