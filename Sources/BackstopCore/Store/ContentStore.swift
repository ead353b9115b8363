import Crypto
import Foundation
import SystemPackage

/// A staging request the store refuses, naming the entry at fault.
public enum StoreError: Error, Equatable, CustomStringConvertible {
    case notADirectory(String)
    /// The bundle's path could not be opened by the caller (open(2)'s errno).
    case cannotOpen(path: String, errno: Int32)
    /// The bundle is open on something other than a directory or a regular file (its kind).
    case unsupportedBundle(path: String, kind: String)
    case notABundle(path: String, message: String)
    case refusedEntry(path: String, reason: String)
    case limitExceeded(String)
    case badManifest(String)
    case manifestMismatch(String)
    case badKey(String)
    case signatureRefused(String)
    case invalidVersionID(String)
    case versionExists(String)
    case unsupportedEntry(path: String, kind: String)
    case symlinkEscapes(path: String, target: String)
    case io(path: String, operation: String, errno: Int32)
    case digestMismatch(version: String, expected: String, actual: String)
    case missingVersion(String)
    /// The content is byte for byte that of a quarantined version (its id).
    case identicalToQuarantined(String)
    /// A directory of the store's layout (the state directory, an agent's, `versions/`,
    /// `staging/`, `quarantine/`) is something else: a symlink (`a symlink to TARGET`) or
    /// another kind of file. It is never followed, and nothing in the store is touched.
    case layoutRefused(path: String, found: String)

    /// One sentence naming the path or version at fault; the `message` of the Varlink error.
    /// Paths and link targets come from the bundle or the caller: their control characters
    /// are escaped (``EntryName/escaped(_:)``), so they reach no terminal or log raw.
    public var description: String {
        let show = EntryName.escaped
        switch self {
        case .notADirectory(let path):
            return FileManager.default.fileExists(atPath: path)
                ? "\(show(path)) is neither a directory nor a tar archive" : "\(show(path)) does not exist"
        case .cannotOpen(let path, let errno): return "cannot open \(show(path)): \(String(cString: strerror(errno)))"
        case .unsupportedBundle(let path, let kind): return "\(show(path)) is a \(kind), neither a directory nor a tar archive"
        case .notABundle(let path, let message): return "\(show(path)) is not a readable tar archive: \(show(message))"
        case .refusedEntry(let path, let reason): return "\(show(path)) \(reason); the bundle is refused"
        case .limitExceeded(let message): return message
        case .badManifest(let message): return "the bundle's manifest is invalid: \(message)"
        case .manifestMismatch(let message): return "the bundle does not match its manifest: \(message)"
        case .badKey(let message): return message
        case .signatureRefused(let message): return message
        case .invalidVersionID(let id):
            return "\"\(id)\" is not a valid version id; use 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-', not starting with '.'"
        case .versionExists(let id): return "a content version \"\(id)\" is already staged"
        case .identicalToQuarantined(let id):
            return "the content is identical to quarantined version \"\(id)\" (same SHA-256), so it is refused; release \(id) if it was quarantined wrongly"
        case .unsupportedEntry(let path, let kind):
            return "\(show(path)) is a \(kind); content may hold only directories, regular files and symlinks inside the tree"
        case .symlinkEscapes(let path, let target):
            return "\(show(path)) is a symlink to \(show(target)), which leaves the content tree"
        case .io(let path, let operation, let errno):
            return "\(operation) \(show(path)): \(String(cString: strerror(errno)))"
        case .digestMismatch(let version, let expected, let actual):
            return "content \(version) does not match its recorded digest (expected \(expected), found \(actual))"
        case .missingVersion(let id): return "content \(id) is missing from the store"
        case .layoutRefused(let path, let found):
            return "\(path) is \(found), where Backstop keeps a directory of its own; Backstop never follows it, so the store is refused and nothing in it is touched: make it a real directory again (moving its files back), then restart backstopd"
        }
    }
}

/// The versioned content store of one agent (SPEC.md, Store):
///
/// ```
/// <state_directory>/<agent>/
///   versions/<id>/   immutable, read-only copies
///   staging/         copies in progress (removed at startup)
///   active -> versions/<id>   swapped with rename(2)
/// ```
public struct ContentStore: Sendable {
    /// `<state_directory>/<agent>`.
    public let root: String
    /// `<state_directory>`.
    public let stateDirectory: String

    /// The store of `agent` at `<stateDirectory>/<agent>`; touches no file.
    public init(stateDirectory: String, agent: String) {
        root = stateDirectory + "/" + agent
        self.stateDirectory = stateDirectory
    }

    /// `<root>/versions`: one immutable directory per staged version.
    public var versionsDirectory: String { root + "/versions" }
    /// `<root>/staging`: copies in progress, removed at startup.
    public var stagingDirectory: String { root + "/staging" }
    /// The active link.
    public var activeLink: String { root + "/active" }
    /// The agent's state file (``AgentStateFile``).
    public var stateFile: String { root + "/state.json" }

    /// The directory of version `id`.
    public func path(of id: String) -> String { versionsDirectory + "/" + id }

    /// Whether `id` may name a version: 1 to 128 of `[A-Za-z0-9._-]`, not starting with a dot.
    public static func isValidVersionID(_ id: String) -> Bool {
        !id.isEmpty && id.count <= 128 && !id.hasPrefix(".")
            && id.unicodeScalars.allSatisfy {
                ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
                    || $0 == "." || $0 == "_" || $0 == "-"
            }
    }

    /// `<root>/quarantine`: one mark per quarantined version (``QuarantineMarks``).
    public var quarantineDirectory: String { root + "/quarantine" }

    /// Creates the store's directories where they are missing: `versions/` readable by all
    /// (an agent may run as its own user and must read its content), `staging/` and
    /// `quarantine/` for root only. Each is opened without following a symlink, relative to
    /// the one above it, so a symlink in the layout is refused, never followed.
    /// - Throws: ``StoreError/layoutRefused(path:found:)`` for a symlink or other file where a
    ///   directory should be; ``StoreError/io(path:operation:errno:)`` otherwise.
    public func prepare() throws(StoreError) {
        for directory in [versionsDirectory, stagingDirectory, quarantineDirectory] {
            let descriptor = try open(directory, creating: true)
            try? descriptor.close()
        }
    }

    /// The mode each directory of the layout is made with.
    private func mode(of path: String) -> mode_t {
        path == stagingDirectory || path == quarantineDirectory ? 0o700 : 0o755
    }

    /// Opens `path`, the state directory or a directory of the store below it, one component
    /// at a time from the state directory, each with `O_NOFOLLOW` relative to the one above
    /// (openat(2)), so that no symlink of the layout is followed, whenever it appears.
    /// - Parameter creating: make missing directories (mkdirat(2)), the state directory's
    ///   parents included.
    /// - Returns: the directory's descriptor; the caller closes it.
    /// - Throws: ``StoreError/layoutRefused(path:found:)``, ``StoreError/io(path:operation:errno:)``.
    func open(_ path: String, creating: Bool) throws(StoreError) -> FileDescriptor {
        let below = path == stateDirectory ? [] : path.dropFirst(stateDirectory.count + 1).split(separator: "/").map(String.init)
        var current = try Self.openStateDirectory(stateDirectory, creating: creating).rawValue
        var walked = stateDirectory
        for name in below {
            walked += "/" + name
            let parent = current
            defer { _ = Glibc.close(parent) }
            current = try Self.openDirectory(name, in: parent, path: walked, mode: mode(of: walked), creating: creating)
        }
        return FileDescriptor(rawValue: current)
    }

    /// Opens `state_directory` without following a symlink there (its parents may be
    /// symlinks: they are the host's), made with its parents when missing and `creating`.
    /// backstopd refuses to start on a state directory that is a symlink: a store reached
    /// through it would look like a new, empty one wherever it leads.
    /// - Returns: its descriptor; the caller closes it.
    /// - Throws: ``StoreError/layoutRefused(path:found:)``, ``StoreError/io(path:operation:errno:)``.
    public static func openStateDirectory(_ path: String, creating: Bool) throws(StoreError) -> FileDescriptor {
        if creating {
            let parent = (path as NSString).deletingLastPathComponent
            do { try DurableFile.makeDirectories(parent.isEmpty ? "/" : parent) } catch {
                throw .io(path: parent, operation: "create", errno: (error as? Errno)?.rawValue ?? EIO)
            }
        }
        return FileDescriptor(rawValue: try openDirectory(path, in: AT_FDCWD, path: path, mode: 0o755, creating: creating))
    }

    /// openat(2) of directory `name` in `parent` with `O_NOFOLLOW`, made first when missing and `creating`.
    /// - Throws: ``StoreError/layoutRefused(path:found:)`` when `name` is not a directory.
    private static func openDirectory(_ name: String, in parent: Int32, path: String, mode: mode_t, creating: Bool) throws(StoreError) -> Int32 {
        let flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
        var descriptor = openat(parent, name, flags)
        if descriptor < 0, errno == ENOENT, creating {
            guard mkdirat(parent, name, mode) == 0 || errno == EEXIST else { throw .io(path: path, operation: "create", errno: errno) }
            descriptor = openat(parent, name, flags)
        }
        guard descriptor < 0 else { return descriptor }
        let code = errno
        var info = stat()
        guard code == ELOOP || code == ENOTDIR, fstatat(parent, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw .io(path: path, operation: "open", errno: code)
        }
        switch info.st_mode & S_IFMT {
        case S_IFLNK:
            var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let length = readlinkat(parent, name, &target, target.count - 1)
            let shown = length >= 0 ? String(decoding: target[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
            throw .layoutRefused(path: path, found: "a symlink to \(shown)")
        case S_IFREG: throw .layoutRefused(path: path, found: "a regular file")
        default: throw .layoutRefused(path: path, found: "not a directory")
        }
    }

    /// Removes entries `names` of `staging/` (unfinished copies, discarded versions) and
    /// everything below them, walking with openat(2) and `O_NOFOLLOW` from a `staging/`
    /// opened the same way: a symlink anywhere is removed itself, never followed.
    /// - Throws: ``StoreError`` when `staging/` cannot be opened (a symlink there included).
    public func removeFromStaging(_ names: [String]) throws(StoreError) {
        let staging = try open(stagingDirectory, creating: false)
        defer { try? staging.close() }
        for name in names { Self.removeTree(named: name, in: staging.rawValue) }
    }

    /// Removes `name` in directory `parent` and, for a directory, all below it (made
    /// writable first: versions are read-only), never following a symlink.
    private static func removeTree(named name: String, in parent: Int32) {
        if unlinkat(parent, name, 0) == 0 { return }
        let descriptor = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        _ = fchmod(descriptor, 0o700)
        for entry in names(in: descriptor) { removeTree(named: entry, in: descriptor) }
        _ = Glibc.close(descriptor)
        _ = unlinkat(parent, name, AT_REMOVEDIR)
    }

    /// The entries of the open directory `descriptor` (readdir(3) of a duplicate, so the
    /// caller keeps `descriptor`), without `.` and `..`; empty when it cannot be read.
    static func names(in descriptor: Int32) -> [String] {
        let duplicate = dup(descriptor)
        guard duplicate >= 0 else { return [] }
        guard let stream = fdopendir(duplicate) else {
            _ = Glibc.close(duplicate)
            return []
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Copies a bundle into the store (never moves it), checks every entry and the
    /// manifest and signature it carries, makes the copy read-only and returns its record.
    ///
    /// `bundle` is a directory or a tar archive (plain, gzip, xz or zstd; ``BundleArchive``),
    /// read only through its descriptor: entries are opened relative to it, never by a path,
    /// so it may lie in a mount namespace the daemon cannot see. The caller keeps it open
    /// until this returns and closes it. The copy is built under `staging/` and its files are hashed again there, so the
    /// digest is of what the store holds. It is renamed into `versions/<id>` only when
    /// complete, checked and fsynced, so a crash or a refusal leaves nothing in
    /// `versions/`; the staging leftovers are removed here on error and at startup otherwise.
    /// - Parameters:
    ///   - id: the operator's version id; nil derives `sha256-<first 16 hex of the digest>`.
    ///   - existing: ids already staged.
    ///   - quarantined: the quarantined versions' ids by digest: the same content under
    ///     another id is refused (quarantined means never again without a `release`).
    ///   - rules: the agent's limits and signature rule.
    /// - Throws: ``StoreError``: an invalid or taken id, a
    ///   refused entry, a limit passed, a manifest that is invalid or does not match, a
    ///   missing or untrusted signature, content identical to a quarantined version, or an I/O error.
    public func stage(
        from bundle: OpenBundle, id: String?, existing: Set<String>, quarantined: [String: String] = [:], rules: StagingRules, at date: Date
    ) throws(StoreError) -> VersionRecord {
        let bundle = try bundle.reopened()
        defer { bundle.close() }
        if let id, !Self.isValidVersionID(id) { throw .invalidVersionID(id) }
        if let id, existing.contains(id) { throw .versionExists(id) }
        try prepare()
        let work = stagingDirectory + "/" + UUID().uuidString
        do {
            try Self.syscall(work, "create") { guard mkdir(work, 0o700) == 0 else { throw Errno(rawValue: errno) } }
            let metadata: BundleMetadata
            switch bundle.kind {
            case .directory:
                metadata = try TreeCopier(root: bundle.descriptor.rawValue, source: bundle.path, destination: work, rules: rules).copy()
            case .archive:
                metadata = try BundleArchive(source: .descriptor(bundle.descriptor.rawValue, name: bundle.path), destination: work, rules: rules).extract()
            }
            let inventory = try TreeInventory.scan(work)
            let signer = try Self.checkSignature(metadata, of: inventory, rules: rules)
            let summary = inventory.summary
            // A quarantined record may still hold a digest in the old format (its files were gone before it could move).
            if let twin = quarantined[summary.digest] ?? quarantined[inventory.digest(.lines)] { throw StoreError.identicalToQuarantined(twin) }
            let versionID = id ?? "sha256-" + summary.digest.prefix(16)
            if existing.contains(versionID) { throw StoreError.versionExists(versionID) }
            try TreeCopier.sealDirectories(under: work, listedIn: inventory)
            let destination = path(of: versionID)
            do { try DurableFile.renameWithoutReplacing(work, to: destination) } catch let error as Errno {
                // Another staging of the same id finished first.
                throw error == .fileExists ? StoreError.versionExists(versionID) : .io(path: destination, operation: "rename into", errno: error.rawValue)
            }
            try Self.syscall(versionsDirectory, "fsync") { try DurableFile.syncDirectory(at: versionsDirectory) }
            var record = VersionRecord(
                id: versionID, digest: summary.digest, fileCount: summary.fileCount, totalBytes: summary.totalBytes,
                stagedAt: date)
            record.signedBy = signer
            return record
        } catch let error as StoreError {
            Self.removeTree(work)
            throw error
        } catch {
            Self.removeTree(work)
            throw .io(path: work, operation: "stage", errno: EIO)
        }
    }

    /// Checks the bundle's manifest against the staged tree and its signature against the
    /// trusted keys. A signature is checked whenever there are trusted keys, and must then
    /// be valid; with `require_signature` it must be there and valid.
    /// - Returns: the file name of the key that signed the manifest, nil when unsigned or unchecked.
    /// - Throws: ``StoreError`` (invalid or mismatched manifest, refused signature).
    static func checkSignature(_ metadata: BundleMetadata, of inventory: TreeInventory, rules: StagingRules) throws(StoreError) -> String? {
        let manifestPath = BundleManifest.directoryName + "/" + BundleManifest.manifestName
        if let manifest = metadata.manifest { try BundleManifest.parse(manifest).check(inventory) }
        let trusted = TrustedKeys(directory: rules.trustedKeysDirectory)
        let problems = trusted.problems.isEmpty ? "" : " (unreadable keys: \(trusted.problems.joined(separator: "; ")))"
        guard let manifest = metadata.manifest, let signature = metadata.signature else {
            guard rules.requireSignature else { return nil }
            throw .signatureRefused(
                "require_signature is set and the bundle has no \(metadata.manifest == nil ? manifestPath : manifestPath + ".sig")")
        }
        if trusted.keys.isEmpty {
            guard rules.requireSignature else { return nil }
            throw .signatureRefused("require_signature is set but \(rules.trustedKeysDirectory) holds no trusted key (*.pem)\(problems)")
        }
        guard let signer = trusted.signer(of: manifest, signature: signature) else {
            throw .signatureRefused(
                "the manifest's signature is not valid for any key in \(rules.trustedKeysDirectory) (\(trusted.keys.map(\.name).joined(separator: ", ")))\(problems)")
        }
        return signer
    }

    /// Recomputes the digest of version `id`, in the record's format, and compares it with the record.
    /// - Throws: ``StoreError/missingVersion(_:)`` or ``StoreError/digestMismatch(version:expected:actual:)``.
    public func verify(_ record: VersionRecord) throws(StoreError) {
        let directory = path(of: record.id)
        var info = stat()
        guard lstat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { throw .missingVersion(record.id) }
        let actual = try TreeInventory.scan(directory).digest(record.digestFormat ?? .lines)
        guard actual == record.digest else {
            throw .digestMismatch(version: record.id, expected: record.digest, actual: actual)
        }
    }

    /// Moves whatever is not a symlink at `link` aside (`<link>.unexpected-<seconds>`), so
    /// that rename(2) can put a link there; nothing found is deleted.
    /// - Throws: ``StoreError/io(path:operation:errno:)`` when rename(2) cannot move it (`EXDEV`
    ///   for a directory of an overlayfs lower layer, `EROFS`, `EACCES`): the caller's swap
    ///   would fail on it, and this says why.
    func clearNonLink(at link: String) throws(StoreError) {
        var info = stat()
        guard lstat(link, &info) == 0, (info.st_mode & S_IFMT) != S_IFLNK else { return }
        let aside = link + ".unexpected-" + String(Int(Date().timeIntervalSince1970))
        guard Glibc.rename(link, aside) == 0 else { throw .io(path: link, operation: "set aside (rename to \(aside))", errno: errno) }
    }

    /// Points the active link at version `id`, and `contentLink` too when given (unless it
    /// already points there); with `id` nil both links are removed (no version is active).
    /// - Throws: ``StoreError/io(path:operation:errno:)``.
    public func point(at id: String?, contentLink: String?) throws(StoreError) {
        guard let id else {
            for link in [activeLink] + (contentLink.map { [$0] } ?? []) {
                guard unlink(link) == 0 || errno == ENOENT else { throw .io(path: link, operation: "remove", errno: errno) }
                FaultInjection.step("unlink \(link)")
            }
            try Self.syscall(root, "fsync") { try DurableFile.syncDirectory(at: root) }
            return
        }
        try clearNonLink(at: activeLink)
        try Self.syscall(activeLink, "swap") { try DurableFile.replaceSymlink(at: activeLink, pointingTo: "versions/" + id) }
        // One already right is left as it is: its directory may be read-only to backstopd.
        if let contentLink, (try? FileManager.default.destinationOfSymbolicLink(atPath: contentLink)) != path(of: id) {
            try Self.syscall(contentLink, "swap") {
                try DurableFile.makeDirectories((contentLink as NSString).deletingLastPathComponent)
                try clearNonLink(at: contentLink)
                try DurableFile.replaceSymlink(at: contentLink, pointingTo: path(of: id))
            }
        }
    }

    /// The version the active link names, nil when there is no link.
    public func activeTarget() -> String? {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: activeLink) else { return nil }
        return (target as NSString).lastPathComponent
    }

    /// What startup recovery found.
    public struct Recovery: Sendable {
        /// Complete versions the ledger did not know (a stage interrupted between its
        /// rename into `versions/` and its record, or a state file from before them):
        /// adopted as staged, never deleted.
        public var adoptedVersions: [String]
        /// Versions the ledger recorded whose files are gone (a removal by garbage collection
        /// interrupted between its rename and its record): forgotten, or for a quarantined
        /// version marked as removed. The active version is never among them.
        public var missingVersions: [String]
        /// Entries of `staging/` to delete (unfinished copies and removed versions), for
        /// ``removeFromStaging(_:)``. Deleting a large tree takes a while, so the caller does it
        /// off the critical path.
        public var garbage: [String]
    }

    /// Startup recovery: adopts complete versions the ledger does not know (anything in
    /// `versions/` was renamed there only once complete), finishes removals whose files
    /// are gone, lists `staging/` for deletion, and makes the active link agree with the ledger.
    /// - Throws: ``StoreError/layoutRefused(path:found:)`` before touching anything when a
    ///   directory of the layout is a symlink; ``StoreError/io(path:operation:errno:)`` when the link cannot be fixed.
    public func recover(ledger: inout ContentLedger, contentLink: String?, at date: Date) throws(StoreError) -> Recovery {
        try prepare()
        let adopted = adoptUnknown(into: &ledger, at: date)
        let missing = ledger.versions.filter { record in
            var info = stat()
            return record.id != ledger.active && record.filesRemovedAt == nil && lstat(path(of: record.id), &info) != 0
        }.map(\.id)
        for id in missing { ledger.filesRemoved(id, at: date) }
        let staging = try open(stagingDirectory, creating: false)
        let garbage = Self.names(in: staging.rawValue)
        try? staging.close()
        let contentTarget = contentLink.flatMap { try? FileManager.default.destinationOfSymbolicLink(atPath: $0) }
        if let active = ledger.active {
            if activeTarget() != active || (contentLink != nil && contentTarget != path(of: active)) {
                try point(at: active, contentLink: contentLink)
            }
        } else if activeTarget() != nil || contentTarget != nil {
            try point(at: nil, contentLink: contentLink)
        }
        return Recovery(adoptedVersions: adopted, missingVersions: missing, garbage: garbage)
    }

    /// Takes version `id` out of `versions/` for garbage collection: renamed into
    /// `staging/` (atomic, then fsync of `versions/`), where it is no version any more and
    /// is deleted by the caller, or at the next startup.
    /// - Returns: its name in `staging/`, for ``removeFromStaging(_:)``.
    /// - Throws: ``StoreError/io(path:operation:errno:)``, ``StoreError/layoutRefused(path:found:)``.
    public func discard(_ id: String) throws(StoreError) -> String {
        try prepare()
        let trash = "removed-" + id + "-" + UUID().uuidString
        try Self.syscall(path(of: id), "remove") {
            try DurableFile.rename(path(of: id), to: stagingDirectory + "/" + trash)
            try DurableFile.syncDirectory(at: versionsDirectory)
        }
        return trash
    }

    /// Rebuilds a ledger from the versions on disk when the state file is lost: every
    /// complete version is kept as staged (digest recomputed), and `activeID` becomes
    /// active again, as a candidate.
    public func adoptVersions(activeID: String?, at date: Date) -> ContentLedger {
        var ledger = ContentLedger()
        _ = adoptUnknown(into: &ledger, at: date)
        if let activeID, ledger.record(activeID) != nil { ledger.activate(activeID) }
        return ledger
    }

    /// Adds every readable version directory the ledger lacks, as staged.
    /// - Returns: the adopted ids.
    private func adoptUnknown(into ledger: inout ContentLedger, at date: Date) -> [String] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: versionsDirectory)) ?? []).sorted()
        var adopted: [String] = []
        for id in names where Self.isValidVersionID(id) && ledger.record(id) == nil {
            guard let summary = try? TreeInventory.scan(path(of: id)).summary else { continue }
            ledger.add(VersionRecord(
                id: id, digest: summary.digest, fileCount: summary.fileCount, totalBytes: summary.totalBytes, stagedAt: date))
            adopted.append(id)
        }
        return adopted
    }

    /// Removes a tree that may be read-only (restoring write permission on directories first).
    public static func removeTree(_ path: String) {
        if let walker = FileManager.default.enumerator(atPath: path) {
            _ = chmod(path, 0o700)
            for case let relative as String in walker {
                var info = stat()
                let full = path + "/" + relative
                if lstat(full, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { _ = chmod(full, 0o700) }
            }
        }
        try? FileManager.default.removeItem(atPath: path)
    }

    static func syscall(_ path: String, _ operation: String, _ body: () throws -> Void) throws(StoreError) {
        do { try body() } catch let error as Errno {
            throw .io(path: path, operation: operation, errno: error.rawValue)
        } catch let error as StoreError {
            throw error
        } catch {
            throw .io(path: path, operation: operation, errno: EIO)
        }
    }
}
