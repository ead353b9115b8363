import Foundation
import Testing
@testable import BackstopCore

/// A temp directory holding a store for agent "demo" and a source tree to stage from.
struct StoreFixture {
    let directory: String
    let store: ContentStore
    let source: String

    init() throws {
        directory = try makeTemporaryDirectory()
        store = ContentStore(stateDirectory: directory + "/state", agent: "demo")
        source = directory + "/source"
        try write("signature-set 1\n", to: source + "/signatures.db")
        try write("rule a\nrule b\n", to: source + "/rules/main.rules")
        try write("#!/bin/sh\necho hook\n", to: source + "/rules/hook.sh", mode: 0o755)
    }

    /// Removes everything the test made, read-only versions included.
    func remove() { ContentStore.removeTree(directory) }

    /// What is left in versions/ and staging/.
    var storeListing: (versions: [String], staging: [String]) {
        (names(in: store.versionsDirectory), names(in: store.stagingDirectory))
    }

    func stage(_ id: String?, from tree: String? = nil, existing: Set<String> = []) throws(StoreError) -> VersionRecord {
        try BackstopCoreTests.stage(tree ?? source, into: store, id: id, existing: existing, at: moment(0).wall)
    }

    /// Stages and asserts the refusal; returns the error.
    func refusal(_ id: String? = nil, from tree: String? = nil, existing: Set<String> = []) -> StoreError? {
        do {
            let record = try stage(id, from: tree, existing: existing)
            Issue.record("staging was expected to fail, got version \(record.id)")
            return nil
        } catch {
            return error
        }
    }
}

@Suite("ContentStore: staging, activation, verification, recovery")
struct ContentStoreTests {
    @Test("staging copies the tree, leaves the source as it was and makes the copy read-only")
    func stageCopiesReadOnly() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let record = try fixture.stage("v1")

        #expect(record.id == "v1")
        #expect(record.standing == .staged)
        #expect(record.fileCount == 3)
        #expect(record.totalBytes == Int64("signature-set 1\n".utf8.count + "rule a\nrule b\n".utf8.count
            + "#!/bin/sh\necho hook\n".utf8.count))
        #expect(record.stagedAt == moment(0).wall)

        // The source is untouched: still there, same contents, same (writable) modes.
        #expect(try String(contentsOfFile: fixture.source + "/signatures.db", encoding: .utf8) == "signature-set 1\n")
        #expect(permissions(fixture.source + "/signatures.db") == 0o644)
        #expect(permissions(fixture.source + "/rules/hook.sh") == 0o755)
        #expect(names(in: fixture.source) == ["rules", "signatures.db"])

        let copy = fixture.store.path(of: "v1")
        #expect(try String(contentsOfFile: copy + "/rules/main.rules", encoding: .utf8) == "rule a\nrule b\n")
        #expect(permissions(copy) == 0o555)
        #expect(permissions(copy + "/rules") == 0o555)
        #expect(permissions(copy + "/signatures.db") == 0o444)
        #expect(permissions(copy + "/rules/main.rules") == 0o444)
        #expect(permissions(copy + "/rules/hook.sh") == 0o555, "the executable bit is kept, write bits are not")
        #expect(fixture.storeListing.versions == ["v1"])
        #expect(fixture.storeListing.staging.isEmpty)
        try fixture.store.verify(record)
    }

    @Test("a derived id is sha256- and 16 hex digits of the tree digest, the same for identical trees")
    func derivedID() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let first = try fixture.stage(nil)
        #expect(first.id.hasPrefix("sha256-"))
        let hex = first.id.dropFirst("sha256-".count)
        #expect(hex.count == 16)
        #expect(hex.allSatisfy { "0123456789abcdef".contains($0) })
        #expect(first.digest.count == 64)
        #expect(first.digest.hasPrefix(hex))

        // An identical tree elsewhere (made in another order) gets the same id in another store.
        let twin = fixture.directory + "/twin"
        try write("#!/bin/sh\necho hook\n", to: twin + "/rules/hook.sh", mode: 0o755)
        try write("rule a\nrule b\n", to: twin + "/rules/main.rules")
        try write("signature-set 1\n", to: twin + "/signatures.db")
        let other = ContentStore(stateDirectory: fixture.directory + "/other-state", agent: "demo")
        let second = try stage(twin, into: other, id: nil, at: moment(5).wall)
        #expect(second.id == first.id)
        #expect(second.digest == first.digest)

        // One changed byte changes the id.
        try write("signature-set 2\n", to: twin + "/signatures.db")
        let third = try stage(twin, into: other, id: nil, existing: [second.id], at: moment(6).wall)
        #expect(third.id != first.id)
    }

    @Test("the executable bit is part of the digest")
    func executableBitInDigest() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let first = try fixture.stage("v1")
        #expect(chmod(fixture.source + "/signatures.db", 0o755) == 0)
        let second = try fixture.stage("v2", existing: ["v1"])
        #expect(first.digest != second.digest)
    }

    @Test("operator version ids: 1 to 128 of [A-Za-z0-9._-], not starting with a dot")
    func operatorIDValidation() throws {
        for id in ["v1", "2024-07-19.291", "Channel_291", "a", String(repeating: "x", count: 128)] {
            #expect(ContentStore.isValidVersionID(id), "\(id)")
        }
        for id in ["", ".hidden", "..", "a/b", "../v1", "v 1", "v1\n", "é", String(repeating: "x", count: 129)] {
            #expect(!ContentStore.isValidVersionID(id), "\(id)")
        }
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        #expect(fixture.refusal("../escape") == .invalidVersionID("../escape"))
        #expect(fixture.refusal(".v1") == .invalidVersionID(".v1"))
        #expect(fixture.storeListing.versions.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: fixture.store.root + "/escape"))
    }

    @Test("a duplicate id is refused, operator-given or derived, and the first copy is kept")
    func duplicateRefused() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let first = try fixture.stage("v1")
        let refusal = fixture.refusal("v1", existing: ["v1"])
        #expect(refusal == .versionExists("v1"))
        #expect(refusal?.description.contains("\"v1\" is already staged") == true)

        let derived = try fixture.stage(nil, existing: ["v1"])
        #expect(fixture.refusal(nil, existing: ["v1", derived.id]) == .versionExists(derived.id))
        #expect(fixture.storeListing.versions == [derived.id, "v1"].sorted())
        #expect(fixture.storeListing.staging.isEmpty)
        try fixture.store.verify(first)
    }

    @Test("content identical to a quarantined version is refused under any id, and nothing is left behind")
    func quarantinedTwinRefused() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let bad = try fixture.stage("v1")
        let twin: StoreError?
        do {
            let record = try stage(
                fixture.source, into: fixture.store, id: "v2", existing: ["v1"], quarantined: [bad.digest: "v1"], at: moment(0).wall)
            Issue.record("staging was expected to fail, got version \(record.id)")
            twin = nil
        } catch { twin = error }
        #expect(twin == .identicalToQuarantined("v1"))
        #expect(twin?.description.contains("identical to quarantined version \"v1\"") == true)
        #expect(fixture.storeListing.versions == ["v1"] && fixture.storeListing.staging.isEmpty)
    }

    @Test("a source that is neither a directory nor a tar archive is refused, and nothing is left behind")
    func sourceNotADirectory() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let file = fixture.source + "/signatures.db"
        let refusal = fixture.refusal("v1", from: file)
        #expect(refusal?.description.hasPrefix("\(file) is not a readable tar archive") == true)
        #expect(fixture.refusal("v1", from: fixture.directory + "/absent") == .cannotOpen(path: fixture.directory + "/absent", errno: ENOENT))
        #expect(StoreError.cannotOpen(path: "/x", errno: ENOENT).description == "cannot open /x: No such file or directory")
        #expect(mkfifo(fixture.directory + "/fifo", 0o600) == 0)
        #expect(fixture.refusal("v1", from: fixture.directory + "/fifo") == .unsupportedBundle(path: fixture.directory + "/fifo", kind: "FIFO"))
        #expect(fixture.storeListing.versions.isEmpty && fixture.storeListing.staging.isEmpty)
    }

    @Test("symlinks that stay inside the tree are kept as symlinks")
    func insideSymlinksKept() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        #expect(symlink("../signatures.db", fixture.source + "/rules/sigs") == 0)
        #expect(symlink("rules/main.rules", fixture.source + "/main") == 0)
        #expect(symlink("rules", fixture.source + "/rules-dir") == 0)
        #expect(symlink("not-there-yet", fixture.source + "/dangling") == 0)
        let record = try fixture.stage("v1")
        let copy = fixture.store.path(of: "v1")
        #expect(linkTarget(copy + "/rules/sigs") == "../signatures.db")
        #expect(linkTarget(copy + "/main") == "rules/main.rules")
        #expect(linkTarget(copy + "/rules-dir") == "rules")
        #expect(linkTarget(copy + "/dangling") == "not-there-yet")
        #expect(try String(contentsOfFile: copy + "/rules/sigs", encoding: .utf8) == "signature-set 1\n")
        #expect(record.fileCount == 3, "links are not counted as files")
        try fixture.store.verify(record)
    }

    /// Symlinks that leave the tree, as "entry -> target" relative to the source.
    static let escapingLinks = [
        "rules/passwd -> /etc/passwd",
        "rules/up -> ../..",
        "up -> ..",
        "rules/outside -> ../../source-sibling",
    ]

    @Test("symlinks leaving the tree are refused, naming the entry, and nothing is left behind",
          arguments: escapingLinks)
    func escapingSymlinkRefused(_ link: String) throws {
        let parts = link.components(separatedBy: " -> ")
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let entry = fixture.source + "/" + parts[0]
        #expect(symlink(parts[1], entry) == 0)
        let error = try #require(fixture.refusal("v1"))
        #expect(error == .symlinkEscapes(path: entry, target: parts[1]))
        #expect(error.description.hasPrefix(entry + " is a symlink to " + parts[1]))
        #expect(fixture.storeListing.versions.isEmpty)
        #expect(fixture.storeListing.staging.isEmpty)
        #expect(linkTarget(entry) == parts[1], "the source is left alone")
    }

    @Test("a symlink that escapes through another symlink (s -> ., x -> s/..) is refused")
    func escapeThroughLinkRefused() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        #expect(symlink(".", fixture.source + "/s") == 0)
        #expect(symlink("s/..", fixture.source + "/x") == 0)
        let error = try #require(fixture.refusal("v1"))
        #expect(error == .symlinkEscapes(path: fixture.source + "/x", target: "s/.."))
        #expect(fixture.storeListing.versions.isEmpty)
        #expect(fixture.storeListing.staging.isEmpty)
    }

    @Test("a FIFO is refused, naming the entry, and nothing is left behind")
    func fifoRefused() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let entry = fixture.source + "/rules/pipe"
        #expect(mkfifo(entry, 0o644) == 0)
        let error = try #require(fixture.refusal("v1"))
        #expect(error == .unsupportedEntry(path: entry, kind: "FIFO"))
        #expect(error.description.hasPrefix(entry + " is a FIFO"))
        #expect(fixture.storeListing.versions.isEmpty)
        #expect(fixture.storeListing.staging.isEmpty)
    }

    @Test("a device node is refused, naming the entry, and nothing is left behind")
    func deviceNodeRefused() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let entry = fixture.source + "/null"
        // The same device as /dev/null (major 1, minor 3). mknod(2) needs CAP_MKNOD; in a
        // container without it the call fails with EPERM and this case cannot be built here.
        guard mknod(entry, S_IFCHR | 0o600, dev_t((1 << 8) | 3)) == 0 else {
            let code = errno
            #expect(code == EPERM, "mknod failed with \(String(cString: strerror(code)))")
            return
        }
        let error = try #require(fixture.refusal("v1"))
        #expect(error == .unsupportedEntry(path: entry, kind: "character device"))
        #expect(error.description.contains(entry))
        #expect(fixture.storeListing.versions.isEmpty)
        #expect(fixture.storeListing.staging.isEmpty)
    }

    @Test("activation swaps the active link and content_link atomically")
    func activationSwapsLinks() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        _ = try fixture.stage("v1")
        try write("signature-set 2\n", to: fixture.source + "/signatures.db")
        _ = try fixture.stage("v2", existing: ["v1"])
        let contentLink = fixture.directory + "/current"
        #expect(fixture.store.activeTarget() == nil)

        try fixture.store.point(at: "v1", contentLink: contentLink)
        #expect(linkTarget(fixture.store.activeLink) == "versions/v1")
        #expect(linkTarget(contentLink) == fixture.store.path(of: "v1"))
        #expect(fixture.store.activeTarget() == "v1")
        #expect(try String(contentsOfFile: fixture.store.activeLink + "/signatures.db", encoding: .utf8)
            == "signature-set 1\n")

        try fixture.store.point(at: "v2", contentLink: contentLink)
        #expect(linkTarget(fixture.store.activeLink) == "versions/v2")
        #expect(linkTarget(contentLink) == fixture.store.path(of: "v2"))
        #expect(try String(contentsOfFile: contentLink + "/signatures.db", encoding: .utf8) == "signature-set 2\n")
        #expect(!names(in: fixture.store.root).contains("active.tmp"))
        #expect(!names(in: fixture.directory).contains("current.tmp"))

        try fixture.store.point(at: "v1", contentLink: nil)
        #expect(fixture.store.activeTarget() == "v1")
        #expect(linkTarget(contentLink) == fixture.store.path(of: "v2"), "without a content_link it is left alone")
    }

    @Test("verify detects a modified file and a missing version")
    func verifyDetectsTampering() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        let record = try fixture.stage("v1")
        try fixture.store.verify(record)

        let file = fixture.store.path(of: "v1") + "/rules/main.rules"
        #expect(chmod(file, 0o644) == 0)
        try Data("rule a\nrule X\n".utf8).write(to: URL(fileURLWithPath: file))
        #expect(chmod(file, 0o444) == 0)
        do {
            try fixture.store.verify(record)
            Issue.record("a modified version must not verify")
        } catch {
            guard case .digestMismatch(let version, let expected, let actual) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(version == "v1")
            #expect(expected == record.digest)
            #expect(actual != record.digest)
            #expect(error.description.contains("content v1 does not match its recorded digest"))
        }

        var ghost = record
        ghost.id = "v9"
        #expect(throws: StoreError.missingVersion("v9")) { try fixture.store.verify(ghost) }
    }

    @Test("recover adopts complete versions it did not record, lists staging leftovers, and repairs the links")
    func recoverCleansUp() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        var ledger = ContentLedger()
        ledger.add(try fixture.stage("v1"))
        try write("signature-set 2\n", to: fixture.source + "/signatures.db")
        ledger.add(try fixture.stage("v2", existing: ["v1"]))
        ledger.activate("v2")
        // A stage interrupted after its rename but before its record was written.
        let orphan = try fixture.stage("orphan", existing: ["v1", "v2"])
        // An unfinished copy in staging/, read-only like a real one.
        let leftover = fixture.store.stagingDirectory + "/5C1D2C5E-unfinished"
        try write("half", to: leftover + "/sub/file", mode: 0o444)
        #expect(chmod(leftover + "/sub", 0o555) == 0)
        #expect(chmod(leftover, 0o555) == 0)
        // The link names the wrong version (a crash between the ledger and the link swap).
        let contentLink = fixture.directory + "/current"
        try fixture.store.point(at: "v1", contentLink: contentLink)

        let recovery = try fixture.store.recover(ledger: &ledger, contentLink: contentLink, at: Date())
        // A complete version is never deleted: it is adopted as staged, with its digest.
        #expect(recovery.adoptedVersions == ["orphan"])
        #expect(ledger.record("orphan")?.standing == .staged)
        #expect(ledger.record("orphan")?.digest == orphan.digest)
        #expect(ledger.record("orphan")?.fileCount == orphan.fileCount)
        #expect(ledger.record("orphan")?.totalBytes == orphan.totalBytes)
        #expect(fixture.storeListing.versions == ["orphan", "v1", "v2"])
        // The unfinished copy waits in staging/ for deletion off the critical path.
        #expect(recovery.garbage == ["5C1D2C5E-unfinished"])
        try fixture.store.removeFromStaging(recovery.garbage)
        #expect(fixture.storeListing.staging.isEmpty)
        #expect(linkTarget(fixture.store.activeLink) == "versions/v2")
        #expect(linkTarget(contentLink) == fixture.store.path(of: "v2"))
        try fixture.store.verify(try #require(ledger.record("v2")))
    }

    @Test("A symlink where the state directory, the agent's directory, staging/, versions/ or quarantine/ should be is refused, naming it and its target; what it leads to is never touched")
    func symlinkInLayoutRefused() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        _ = try fixture.stage("v1")
        let elsewhere = fixture.directory + "/elsewhere"
        try write("precious\n", to: elsewhere + "/precious")
        for directory in [fixture.store.stagingDirectory, fixture.store.versionsDirectory, fixture.store.quarantineDirectory, fixture.store.root] {
            let aside = directory + ".real"
            #expect(rename(directory, aside) == 0)
            #expect(symlink(elsewhere, directory) == 0)
            #expect(throws: StoreError.layoutRefused(path: directory, found: "a symlink to \(elsewhere)")) { try fixture.store.prepare() }
            if directory == fixture.store.stagingDirectory {
                #expect(throws: StoreError.layoutRefused(path: directory, found: "a symlink to \(elsewhere)")) {
                    try fixture.store.removeFromStaging(["precious"])
                }
            }
            var ledger = ContentLedger()
            #expect(throws: StoreError.self) { _ = try fixture.store.recover(ledger: &ledger, contentLink: nil, at: Date()) }
            #expect(throws: StoreError.self, "staging never writes through it") { _ = try fixture.stage("v2", existing: ["v1"]) }
            #expect(FileManager.default.fileExists(atPath: elsewhere + "/precious"))
            #expect(unlink(directory) == 0 && rename(aside, directory) == 0)
        }
        #expect(rename(fixture.store.stateDirectory, fixture.directory + "/state.real") == 0)
        #expect(symlink(fixture.directory + "/state.real", fixture.store.stateDirectory) == 0)
        #expect(throws: StoreError.layoutRefused(path: fixture.store.stateDirectory, found: "a symlink to \(fixture.directory)/state.real")) {
            try ContentStore.openStateDirectory(fixture.store.stateDirectory, creating: true).close()
        }
        #expect(StoreError.layoutRefused(path: "/var/lib/backstop/demo/staging", found: "a symlink to /etc").description.hasPrefix(
            "/var/lib/backstop/demo/staging is a symlink to /etc, where Backstop keeps a directory of its own; Backstop never follows it"))
    }

    @Test("Quarantine marks beside the versions are written for quarantined versions, removed on release, and bring a quarantine back into a ledger that lost it")
    func quarantineMarks() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        var ledger = ContentLedger()
        ledger.add(try fixture.stage("v1"))
        try write("signature-set 2\n", to: fixture.source + "/signatures.db")
        ledger.add(try fixture.stage("v2", existing: ["v1"]))
        ledger.activate("v2")
        ledger.quarantine("v2", reason: "crash-loop", at: moment(10).wall)
        var marked = try fixture.store.addQuarantineMarks(for: ledger, marked: [])
        #expect(try fixture.store.removeQuarantineMarks(notIn: ledger, marked: marked) == ["v2"])
        #expect(marked == ["v2"])
        #expect(FileManager.default.fileExists(atPath: fixture.store.quarantineMarkPath("v2")))

        // Both generations of the state file lost: the versions are adopted again, as staged.
        var adopted = fixture.store.adoptVersions(activeID: "v2", at: moment(20).wall)
        #expect(adopted.record("v2")?.standing == .candidate)
        let marks = try fixture.store.quarantineMarks()
        #expect(marks.unreadable.isEmpty)
        #expect(adopted.applyQuarantineMarks(marks.marks, hasFiles: { _ in true }, at: moment(20).wall) == ["v2"])
        #expect(adopted.record("v2")?.standing == .quarantined && adopted.record("v2")?.quarantineReason == "crash-loop")
        #expect(adopted.record("v1")?.standing == .staged)
        #expect(!adopted.repair(isValidID: ContentStore.isValidVersionID).isEmpty)
        #expect(adopted.active == nil, "a quarantined version is never active again")
        #expect(adopted.applyQuarantineMarks(marks.marks, hasFiles: { _ in true }, at: moment(20).wall).isEmpty, "applied once")

        // A version whose files are gone keeps its quarantine, and its digest stays refused.
        var empty = ContentLedger()
        #expect(empty.applyQuarantineMarks(marks.marks, hasFiles: { _ in false }, at: moment(30).wall) == ["v2"])
        #expect(empty.record("v2")?.filesRemovedAt == moment(30).wall)
        #expect(empty.quarantinedByDigest[ledger.record("v2")!.digest] == "v2")

        // A mark of an id now recorded with other content is not applied.
        var other = ContentLedger()
        var different = ledger.record("v1")!
        different.id = "v2"
        other.add(different)
        #expect(other.applyQuarantineMarks(marks.marks, hasFiles: { _ in true }, at: moment(30).wall).isEmpty)

        ledger.release("v2")
        #expect(try fixture.store.addQuarantineMarks(for: ledger, marked: marked) == ["v2"], "a release does not remove the mark before the state file is written")
        #expect(FileManager.default.fileExists(atPath: fixture.store.quarantineMarkPath("v2")))
        marked = try fixture.store.removeQuarantineMarks(notIn: ledger, marked: marked)
        #expect(marked.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: fixture.store.quarantineMarkPath("v2")))
    }

    @Test("recover creates a missing active link and a missing content_link")
    func recoverCreatesMissingLinks() throws {
        let fixture = try StoreFixture()
        defer { fixture.remove() }
        var ledger = ContentLedger()
        ledger.add(try fixture.stage("v1"))
        ledger.activate("v1")
        let contentLink = fixture.directory + "/current"
        let recovery = try fixture.store.recover(ledger: &ledger, contentLink: contentLink, at: Date())
        #expect(recovery.adoptedVersions.isEmpty && recovery.garbage.isEmpty)
        #expect(linkTarget(fixture.store.activeLink) == "versions/v1")
        #expect(linkTarget(contentLink) == fixture.store.path(of: "v1"))
    }

    @Test("garbage collection removes quarantined, then staged, then older known-good versions, oldest first, and never the active, last known-good or candidate")
    func garbageOrder() {
        var ledger = ContentLedger()
        for (index, id) in ["v1", "v2", "v3", "v4", "v5", "v6"].enumerated() {
            ledger.add(VersionRecord(id: id, digest: id, fileCount: 1, totalBytes: 1, stagedAt: moment(Double(index)).wall))
        }
        ledger.promote("v1", at: moment(10).wall)
        ledger.quarantine("v2", reason: "crash-loop", at: moment(11).wall)
        ledger.promote("v4", at: moment(12).wall)
        ledger.activate("v5")
        #expect(ledger.candidate == "v5" && ledger.knownGood == "v4")
        #expect(ledger.garbage(keeping: 1) == ["v2", "v3", "v6"], "the older known-good v1 is the last to go")
        #expect(ledger.garbage(keeping: 3) == ["v2"])
        #expect(ledger.garbage(keeping: 4).isEmpty)
        ledger.filesRemoved("v2", at: moment(13).wall)
        ledger.filesRemoved("v3", at: moment(13).wall)
        #expect(ledger.record("v2")?.filesRemovedAt != nil, "a quarantined version keeps its record")
        #expect(ledger.record("v3") == nil, "a staged one is forgotten")
        #expect(ledger.garbage(keeping: 1) == ["v6"])
        ledger.release("v2")
        #expect(ledger.record("v2") == nil, "releasing a version whose files are gone forgets it, so it can be staged again")
    }
}
