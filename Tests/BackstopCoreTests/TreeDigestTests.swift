import Crypto
import Foundation
import Testing
@testable import BackstopCore

/// The tree digest: one encoding per tree, as README ("The tree digest") defines it, and
/// the move of versions recorded with the old encoding to it.
@Suite("Tree digest: an injective encoding, and the migration of stores that used the old one")
struct TreeDigestTests {
    /// Files `b c` and `c`, and a symlink `link` -> `target`.
    static func spaceTree(at path: String, link: String, target: String) throws {
        try write("first\n", to: path + "/b c")
        try write("second\n", to: path + "/c")
        #expect(symlink(target, path + "/" + link) == 0)
    }

    @Test("{symlink `a b` -> `c`} and {symlink `a` -> `b c`}, beside files `b c` and `c`, have different digests, and quarantining one does not refuse the other")
    func spacePairDiffers() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let first = fixture.directory + "/first"
        let second = fixture.directory + "/second"
        try Self.spaceTree(at: first, link: "a b", target: "c")
        try Self.spaceTree(at: second, link: "a", target: "b c")

        let one = try fixture.stage(nil, from: first)
        let other = try stage(second, into: fixture.store, id: nil, existing: [one.id], quarantined: [one.digest: one.id], at: moment(1).wall)
        #expect(one.digest != other.digest)
        #expect(one.id != other.id)
        try fixture.store.verify(one)
        try fixture.store.verify(other)
    }

    @Test("the digest is SHA-256 of the records README describes: tag, then type, length-prefixed path, mode, size, content hash or target")
    func digestFollowsTheDocumentedEncoding() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        #expect(symlink("main.rules", fixture.source + "/rules/current") == 0)
        #expect(mkdir(fixture.source + "/empty", 0o755) == 0)
        let record = try fixture.stage("v1")

        func field(_ text: String) -> [UInt8] {
            withUnsafeBytes(of: UInt32(text.utf8.count).bigEndian, Array.init) + Array(text.utf8)
        }
        func file(_ path: String, _ contents: String, executable: Bool) -> [UInt8] {
            Array("F".utf8) + field(path) + withUnsafeBytes(of: UInt32(executable ? 493 : 420).bigEndian, Array.init)
                + withUnsafeBytes(of: UInt64(contents.utf8.count).bigEndian, Array.init) + Array(SHA256.hash(data: Data(contents.utf8)))
        }
        // In byte order of the paths: empty, rules, rules/current, rules/hook.sh, rules/main.rules, signatures.db.
        var bytes = Array("backstop-tree/2\n".utf8)
        bytes += Array("D".utf8) + field("empty")
        bytes += Array("D".utf8) + field("rules")
        bytes += Array("L".utf8) + field("rules/current") + field("main.rules")
        bytes += file("rules/hook.sh", "#!/bin/sh\necho hook\n", executable: true)
        bytes += file("rules/main.rules", "rule a\nrule b\n", executable: false)
        bytes += file("signatures.db", "signature-set 1\n", executable: false)
        let expected = SHA256.hash(data: Data(bytes)).map { String(format: "%02x", $0) }.joined()
        #expect(record.digest == expected)
        #expect(record.digestFormat == .records)
    }

    /// The digest the store computed before records were numbered: SHA-256 over one line per
    /// entry, written here from its old description, independently of the store's code.
    static func oldDigest(of root: String) throws -> String {
        let paths = try FileManager.default.subpathsOfDirectory(atPath: root)
            .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        var text = ""
        for path in paths {
            let full = root + "/" + path
            var info = stat()
            #expect(lstat(full, &info) == 0)
            switch info.st_mode & S_IFMT {
            case S_IFDIR: text += "D \(path)\n"
            case S_IFLNK: text += "L \(path) \(try FileManager.default.destinationOfSymbolicLink(atPath: full))\n"
            default:
                let contents = try Data(contentsOf: URL(fileURLWithPath: full))
                let hash = SHA256.hash(data: contents).map { String(format: "%02x", $0) }.joined()
                text += "F \(path) \(info.st_mode & 0o111 != 0 ? 755 : 644) \(contents.count) \(hash)\n"
            }
        }
        return SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    @Test("a state file of the old format keeps its active, known-good and quarantined versions; their digests move to the current format, a damaged one is left to fail verification, and a removed quarantined one stays refused")
    func oldStoreMigrates() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        // Versions staged by the current code, then the state file rewritten as the old code wrote it.
        let good = try fixture.stage("v1")
        try write("signature-set 2\n", to: fixture.source + "/signatures.db")
        let bad = try fixture.stage("v2", existing: ["v1"])
        try write("signature-set 3\n", to: fixture.source + "/signatures.db")
        _ = try fixture.stage("v3", existing: ["v1", "v2"])
        try write("signature-set 4\n", to: fixture.source + "/signatures.db")
        let damaged = try fixture.stage("v4", existing: ["v1", "v2", "v3"])
        let removedSource = fixture.directory + "/v3-source"
        try FileManager.default.copyItem(atPath: fixture.store.path(of: "v3"), toPath: removedSource)
        let oldDigests = try ["v1", "v2", "v3", "v4"].map { try Self.oldDigest(of: fixture.store.path(of: $0)) }
        ContentStore.removeTree(fixture.store.path(of: "v3"))
        let file = fixture.store.path(of: "v4") + "/signatures.db"
        #expect(chmod(file, 0o644) == 0)
        try Data("signature-set X\n".utf8).write(to: URL(fileURLWithPath: file))
        try fixture.store.point(at: "v1", contentLink: nil)
        let state = """
            {"bootID":"","consecutiveFailures":0,"escalationTried":[],"failures":[],"givenUp":false,"ledger":{"active":"v1","versions":[\
            {"digest":"\(oldDigests[0])","file_count":3,"id":"v1","promoted_at":"2026-01-01T00:00:00Z","staged_at":"2026-01-01T00:00:00Z","standing":"known-good","total_bytes":50},\
            {"digest":"\(oldDigests[1])","file_count":3,"id":"v2","quarantine_reason":"crash-loop","quarantined_at":"2026-01-02T00:00:00Z","staged_at":"2026-01-02T00:00:00Z","standing":"quarantined","total_bytes":50},\
            {"digest":"\(oldDigests[2])","file_count":3,"files_removed_at":"2026-01-03T00:00:00Z","id":"v3","quarantine_reason":"crash-loop","quarantined_at":"2026-01-03T00:00:00Z","staged_at":"2026-01-03T00:00:00Z","standing":"quarantined","total_bytes":50},\
            {"digest":"\(oldDigests[3])","file_count":3,"id":"v4","staged_at":"2026-01-04T00:00:00Z","standing":"staged","total_bytes":50}]},\
            "mode":"normal","probationBankedSeconds":0,"schema":1}
            """
        try write(state, to: fixture.store.stateFile)

        var loaded = try #require(try AgentStateFile.load(path: fixture.store.stateFile))
        #expect(loaded.ledger.versions.allSatisfy { $0.digestFormat == nil })
        let migration = fixture.store.migrateDigests(&loaded.ledger)
        #expect(migration.migrated == ["v1", "v2"])
        #expect(migration.mismatched == ["v4"])
        #expect(migration.kept == ["v3"])

        let ledger = loaded.ledger
        #expect(ledger.active == "v1")
        #expect(ledger.knownGood == "v1")
        #expect(ledger.quarantined == ["v2", "v3"])
        #expect(ledger.record("v1")?.digest == good.digest)
        #expect(ledger.record("v2")?.digest == bad.digest)
        #expect(ledger.record("v1")?.digestFormat == .records)
        #expect(ledger.record("v3")?.digest == oldDigests[2])
        try fixture.store.verify(try #require(ledger.record("v1")))
        #expect(throws: StoreError.self) { try fixture.store.verify(try #require(ledger.record("v4"))) }
        #expect(damaged.digest != ledger.record("v4")?.digest)

        // Saved and read again, the records say their format; a second pass has nothing to do.
        loaded.ledger = ledger
        try loaded.save(path: fixture.store.stateFile)
        var again = try #require(try AgentStateFile.load(path: fixture.store.stateFile))
        #expect(again.ledger == ledger)
        #expect(fixture.store.migrateDigests(&again.ledger) == ContentStore.DigestMigration(migrated: [], mismatched: ["v4"], kept: ["v3"]))

        // Content identical to a quarantined version is refused under a new id, whichever format its record holds.
        let existing = Set(ledger.versions.map(\.id))
        for (source, twin) in [(fixture.store.path(of: "v2"), "v2"), (removedSource, "v3")] {
            #expect(throws: StoreError.identicalToQuarantined(twin)) {
                try stage(source, into: fixture.store, id: "again-\(twin)", existing: existing, quarantined: ledger.quarantinedByDigest, at: moment(9).wall)
            }
        }
    }
}
