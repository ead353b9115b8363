import Foundation

/// What Backstop knows about one content version of one agent.
///
/// Persisted in the agent's state file; the files themselves live in the
/// store (`<state_directory>/<agent>/versions/<id>/`).
public struct VersionRecord: Codable, Sendable, Equatable {
    /// Where a version stands in its life: staged → candidate → known-good, or quarantined.
    public enum Standing: String, Codable, Sendable {
        /// Copied into the store and verified, never activated (or activated and rolled back by an operator).
        case staged
        /// Activated and in probation: failures count against it.
        case candidate
        /// Passed probation (or was promoted by an operator).
        case knownGood = "known-good"
        /// Marked bad; never activated again without an operator's `release`.
        case quarantined
    }

    /// The version id: operator-given, or `sha256-` and the first 16 hex digits of the tree digest.
    public var id: String
    /// SHA-256 of the whole tree in hex, in ``digestFormat``.
    public var digest: String
    /// How ``digest`` encodes the tree; nil in records written before formats were
    /// numbered, which are ``TreeDigestFormat/lines`` (startup moves those whose files
    /// are in the store to the current format, ``ContentStore/migrateDigests(_:)``).
    public var digestFormat: TreeDigestFormat?
    /// Number of regular files in the tree.
    public var fileCount: Int
    /// Total size of the regular files in bytes.
    public var totalBytes: Int64
    /// Where the version stands: staged, candidate, known-good or quarantined.
    public var standing: Standing
    /// Wall-clock time of staging.
    public var stagedAt: Date
    /// Wall-clock time the version became known-good; also orders known-good versions, newest last.
    public var promotedAt: Date?
    /// Wall-clock time and reason of the quarantine.
    public var quarantinedAt: Date?
    /// Why it was quarantined, e.g. `crash-loop` or `verification-failed`; nil unless quarantined.
    public var quarantineReason: String?
    /// The file name of the trusted key that signed the bundle's manifest; nil when unsigned.
    public var signedBy: String?
    /// When garbage collection removed the files of this quarantined version; its record
    /// stays so that the version remains refused. Nil while the files are in the store.
    public var filesRemovedAt: Date?

    enum CodingKeys: String, CodingKey {
        case id, digest, standing
        case digestFormat = "digest_format"
        case fileCount = "file_count"
        case totalBytes = "total_bytes"
        case stagedAt = "staged_at"
        case promotedAt = "promoted_at"
        case quarantinedAt = "quarantined_at"
        case quarantineReason = "quarantine_reason"
        case signedBy = "signed_by"
        case filesRemovedAt = "files_removed_at"
    }

    /// A freshly staged version: standing `staged`, never promoted or quarantined, its
    /// digest in the current format.
    public init(id: String, digest: String, fileCount: Int, totalBytes: Int64, stagedAt: Date) {
        self.id = id
        self.digest = digest
        self.digestFormat = .current
        self.fileCount = fileCount
        self.totalBytes = totalBytes
        self.standing = .staged
        self.stagedAt = stagedAt
    }
}

/// The versions of one agent and which of them is active: the content half of an agent's state.
public struct ContentLedger: Codable, Sendable, Equatable {
    /// Every version in the store, in staging order.
    public private(set) var versions: [VersionRecord] = []
    /// The id the active link names, nil before the first activation.
    public private(set) var active: String?

    public init() {}

    /// A ledger as the daemon reported it (`ListContent` and the active version of `GetStatus`).
    public init(versions: [VersionRecord], active: String?) {
        self.versions = versions
        self.active = active
    }

    /// The record for `id`, if staged.
    public func record(_ id: String) -> VersionRecord? {
        versions.first { $0.id == id }
    }

    /// The active version when it is in probation.
    public var candidate: String? {
        guard let active, record(active)?.standing == .candidate else { return nil }
        return active
    }

    /// Known-good versions, most recently promoted first.
    public var knownGoodNewestFirst: [String] {
        versions
            .filter { $0.standing == .knownGood }
            .sorted { ($0.promotedAt ?? .distantPast) > ($1.promotedAt ?? .distantPast) }
            .map(\.id)
    }

    /// The last known-good version: the one a rollback returns to.
    public var knownGood: String? { knownGoodNewestFirst.first }

    /// Quarantined version ids in staging order.
    public var quarantined: [String] {
        versions.filter { $0.standing == .quarantined }.map(\.id)
    }

    /// Adds a freshly staged version. The caller has checked that the id is new.
    public mutating func add(_ record: VersionRecord) {
        versions.append(record)
    }

    /// Makes `id` the active version. A staged version becomes the candidate; a
    /// known-good one stays known-good. A candidate that is replaced without a
    /// verdict goes back to staged, so that it is never promoted by accident.
    public mutating func activate(_ id: String) {
        if let previous = candidate, previous != id {
            update(previous) { $0.standing = .staged }
        }
        update(id) { record in
            if record.standing == .staged { record.standing = .candidate }
        }
        active = id
    }

    /// Marks `id` known-good at `date`.
    public mutating func promote(_ id: String, at date: Date) {
        update(id) {
            $0.standing = .knownGood
            $0.promotedAt = date
        }
    }

    /// The quarantined versions' ids by their digest (the first for each): content with one of
    /// these digests is the same bytes, refused under any id. A record still in the
    /// ``TreeDigestFormat/lines`` format (its files were removed before it could move to the
    /// current one) is listed under that digest.
    public var quarantinedByDigest: [String: String] {
        Dictionary(versions.filter { $0.standing == .quarantined }.map { ($0.digest, $0.id) }) { first, _ in first }
    }

    /// Marks `id` quarantined. Quarantining the active version does not change
    /// `active`; the caller activates another version or stops the agent.
    public mutating func quarantine(_ id: String, reason: String, at date: Date) {
        update(id) {
            $0.standing = .quarantined
            $0.quarantinedAt = date
            $0.quarantineReason = reason
        }
    }

    /// Lifts a quarantine: the version is staged again and may be activated. A version
    /// whose files were removed is forgotten instead, so that it can be staged again.
    public mutating func release(_ id: String) {
        if record(id)?.filesRemovedAt != nil {
            versions.removeAll { $0.id == id }
            return
        }
        update(id) {
            $0.standing = .staged
            $0.quarantinedAt = nil
            $0.quarantineReason = nil
        }
    }

    /// Versions whose files garbage collection may remove, in the order it removes them,
    /// until `keeping` others are left besides the active version, the last known-good and
    /// the candidate: quarantined versions first, then staged ones, then older known-good
    /// ones (the rollback targets go last), each oldest first. Quarantined versions whose
    /// files are gone do not count.
    public func garbage(keeping: Int) -> [String] {
        let protected = Set([active, knownGood, candidate].compactMap { $0 })
        let others = versions.filter { !protected.contains($0.id) && $0.filesRemovedAt == nil }
        let rank: [VersionRecord.Standing: Int] = [.quarantined: 0, .staged: 1, .candidate: 1, .knownGood: 2]
        // `versions` is in staging order (staged_at has whole seconds only), which the sort keeps within a rank.
        let ordered = others.enumerated().sorted { (rank[$0.element.standing]!, $0.offset) < (rank[$1.element.standing]!, $1.offset) }
        return ordered.prefix(max(0, others.count - keeping)).map(\.element.id)
    }

    /// Records that the files of `id` are gone: a quarantined version keeps its record
    /// (marked with `date`), so it stays refused; any other is forgotten.
    public mutating func filesRemoved(_ id: String, at date: Date) {
        guard let existing = record(id) else { return }
        if existing.standing == .quarantined {
            update(id) { $0.filesRemovedAt = date }
        } else {
            versions.removeAll { $0.id == id }
        }
    }

    /// Makes a state read from disk safe to act on: records whose id could name a path
    /// outside the store are dropped, and an active version that is unknown or
    /// quarantined is replaced by the last known-good version (or by none).
    /// - Returns: what was wrong, for the log; empty when nothing was.
    public mutating func repair(isValidID: (String) -> Bool) -> [String] {
        var problems: [String] = []
        var seen = Set<String>()
        let duplicates = versions.filter { !seen.insert($0.id).inserted }.map(\.id)
        if !duplicates.isEmpty {
            var kept = Set<String>()
            versions.removeAll { !kept.insert($0.id).inserted }
            problems.append("dropped second records of ids: \(duplicates.joined(separator: ", "))")
        }
        let invalid = versions.filter { !isValidID($0.id) }.map(\.id)
        if !invalid.isEmpty {
            versions.removeAll { !isValidID($0.id) }
            problems.append("dropped records with invalid ids: \(invalid.joined(separator: ", "))")
        }
        if let active, record(active) == nil || record(active)?.standing == .quarantined {
            problems.append("the active version \(active) is \(record(active) == nil ? "unknown" : "quarantined")")
            self.active = knownGood
        }
        return problems
    }

    /// Records `digest`, in `format`, as the digest of `id` (moving a record to the current format).
    public mutating func redigest(_ id: String, digest: String, format: TreeDigestFormat) {
        update(id) {
            $0.digest = digest
            $0.digestFormat = format
        }
    }

    /// Quarantines every version a quarantine mark names (the marks are kept beside the
    /// versions, ``ContentStore/quarantineMarks()``, so they outlive both generations of the
    /// state file): a version recorded with the mark's digest is quarantined with the mark's
    /// reason and time; one not recorded is added from its mark, with its files marked
    /// removed when `hasFiles` says they are gone. A mark of an id recorded with another
    /// digest belongs to other content and is skipped. Quarantining the active version does
    /// not change `active`; ``repair(isValidID:)`` does.
    /// - Returns: the ids whose quarantine the ledger had not recorded.
    public mutating func applyQuarantineMarks(_ marks: [VersionRecord], hasFiles: (String) -> Bool, at date: Date) -> [String] {
        var restored: [String] = []
        for mark in marks {
            if let existing = record(mark.id) {
                guard existing.digest == mark.digest, existing.standing != .quarantined else { continue }
                quarantine(mark.id, reason: mark.quarantineReason ?? "quarantine mark", at: mark.quarantinedAt ?? date)
            } else {
                var added = mark
                added.standing = .quarantined
                if added.filesRemovedAt == nil && !hasFiles(mark.id) { added.filesRemovedAt = date }
                versions.append(added)
            }
            restored.append(mark.id)
        }
        return restored
    }

    /// Clears the active version (the agent then has nothing to run).
    public mutating func deactivate() {
        active = nil
    }

    private mutating func update(_ id: String, _ change: (inout VersionRecord) -> Void) {
        guard let index = versions.firstIndex(where: { $0.id == id }) else { return }
        change(&versions[index])
    }
}
