import Crypto
import Foundation
import SystemPackage

/// A staging request the store refuses, naming the entry at fault.
public enum StoreError: Error, Equatable, CustomStringConvertible {
    case notADirectory(String)
    case invalidVersionID(String)
    case versionExists(String)
    case unsupportedEntry(path: String, kind: String)
    case symlinkEscapes(path: String, target: String)
    case io(path: String, operation: String, errno: Int32)
    case digestMismatch(version: String, expected: String, actual: String)
    case missingVersion(String)

    /// One sentence naming the path or version at fault; the `message` of the Varlink error.
    public var description: String {
        switch self {
        case .notADirectory(let path):
            return FileManager.default.fileExists(atPath: path) ? "\(path) is not a directory" : "\(path) does not exist"
        case .invalidVersionID(let id):
            return "\"\(id)\" is not a valid version id; use 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-', not starting with '.'"
        case .versionExists(let id): return "a content version \"\(id)\" is already staged"
        case .unsupportedEntry(let path, let kind):
            return "\(path) is a \(kind); content may hold only directories, regular files and symlinks inside the tree"
        case .symlinkEscapes(let path, let target):
            return "\(path) is a symlink to \(target), which leaves the content tree"
        case .io(let path, let operation, let errno):
            return "\(operation) \(path): \(String(cString: strerror(errno)))"
        case .digestMismatch(let version, let expected, let actual):
            return "content \(version) does not match its recorded digest (expected \(expected), found \(actual))"
        case .missingVersion(let id): return "content \(id) is missing from the store"
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

    /// The store of `agent` at `<stateDirectory>/<agent>`; touches no file.
    public init(stateDirectory: String, agent: String) {
        root = stateDirectory + "/" + agent
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

    /// Creates the store's directories: `versions/` readable by all (an agent may run
    /// as its own user and must read its content), `staging/` for root only.
    /// - Throws: the FileManager error.
    public func prepare() throws {
        try DurableFile.makeDirectories(root, mode: 0o755)
        try DurableFile.makeDirectories(versionsDirectory, mode: 0o755)
        try DurableFile.makeDirectories(stagingDirectory, mode: 0o700)
    }

    /// Copies the directory tree at `source` into the store (never moves it), checks
    /// every entry, makes the copy read-only and returns its record.
    ///
    /// The copy is built under `staging/` and renamed into `versions/<id>` only when
    /// complete and fsynced, so a crash or a refusal leaves nothing in `versions/`;
    /// the staging leftovers are removed here on error and at startup otherwise.
    /// - Parameters:
    ///   - id: the operator's version id; nil derives `sha256-<first 16 hex of the digest>`.
    ///   - existing: ids already staged.
    /// - Throws: ``StoreError``: a non-directory source, an invalid or taken id, a FIFO,
    ///   socket or device node, a symlink that leaves the tree, or an I/O error.
    public func stage(from source: String, id: String?, existing: Set<String>, at date: Date) throws(StoreError) -> VersionRecord {
        if let id, !Self.isValidVersionID(id) { throw .invalidVersionID(id) }
        if let id, existing.contains(id) { throw .versionExists(id) }
        var info = stat()
        guard stat(source, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { throw .notADirectory(source) }
        do { try prepare() } catch { throw .io(path: root, operation: "create", errno: (error as? Errno)?.rawValue ?? EIO) }
        let work = stagingDirectory + "/" + UUID().uuidString
        do {
            let summary = try TreeCopier(source: source, destination: work).copy()
            let versionID = id ?? "sha256-" + summary.digest.prefix(16)
            if existing.contains(versionID) { throw StoreError.versionExists(versionID) }
            try Self.syscall(work, "fsync") { try DurableFile.syncDirectory(at: work) }
            let destination = path(of: versionID)
            try Self.syscall(destination, "rename into") { try DurableFile.rename(work, to: destination) }
            try Self.syscall(versionsDirectory, "fsync") { try DurableFile.syncDirectory(at: versionsDirectory) }
            var record = VersionRecord(
                id: versionID, digest: summary.digest, fileCount: summary.fileCount, totalBytes: summary.totalBytes,
                stagedAt: date)
            record.standing = .staged
            return record
        } catch let error as StoreError {
            Self.removeTree(work)
            throw error
        } catch {
            Self.removeTree(work)
            throw .io(path: work, operation: "stage", errno: EIO)
        }
    }

    /// Recomputes the digest of version `id` and compares it with the record.
    /// - Throws: ``StoreError/missingVersion(_:)`` or ``StoreError/digestMismatch(version:expected:actual:)``.
    public func verify(_ record: VersionRecord) throws(StoreError) {
        let directory = path(of: record.id)
        var info = stat()
        guard lstat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { throw .missingVersion(record.id) }
        let actual = try TreeCopier.summary(of: directory).digest
        guard actual == record.digest else {
            throw .digestMismatch(version: record.id, expected: record.digest, actual: actual)
        }
    }

    /// Moves whatever is not a symlink at `link` aside (`<link>.unexpected-<seconds>`), so
    /// that rename(2) can put a link there; nothing found is deleted.
    func clearNonLink(at link: String) {
        var info = stat()
        guard lstat(link, &info) == 0, (info.st_mode & S_IFMT) != S_IFLNK else { return }
        _ = Glibc.rename(link, link + ".unexpected-" + String(Int(Date().timeIntervalSince1970)))
    }

    /// Points the active link at version `id`, and `contentLink` too when given;
    /// with `id` nil both links are removed (no version is active).
    /// - Throws: ``StoreError/io(path:operation:errno:)``.
    public func point(at id: String?, contentLink: String?) throws(StoreError) {
        guard let id else {
            for link in [activeLink] + (contentLink.map { [$0] } ?? []) where unlink(link) != 0 && errno != ENOENT {
                throw .io(path: link, operation: "remove", errno: errno)
            }
            try Self.syscall(root, "fsync") { try DurableFile.syncDirectory(at: root) }
            return
        }
        clearNonLink(at: activeLink)
        try Self.syscall(activeLink, "swap") { try DurableFile.replaceSymlink(at: activeLink, pointingTo: "versions/" + id) }
        if let contentLink {
            try Self.syscall(contentLink, "swap") {
                try DurableFile.makeDirectories((contentLink as NSString).deletingLastPathComponent)
                clearNonLink(at: contentLink)
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
        /// Paths to delete: unfinished copies in `staging/`. Deleting a large tree takes a
        /// while, so the caller does it off the critical path.
        public var garbage: [String]
    }

    /// Startup recovery: adopts complete versions the ledger does not know (anything in
    /// `versions/` was renamed there only once complete), lists `staging/` for deletion,
    /// and makes the active link agree with the ledger.
    /// - Throws: ``StoreError/io(path:operation:errno:)`` when the link cannot be fixed.
    public func recover(ledger: inout ContentLedger, contentLink: String?, at date: Date) throws(StoreError) -> Recovery {
        let adopted = adoptUnknown(into: &ledger, at: date)
        let garbage = ((try? FileManager.default.contentsOfDirectory(atPath: stagingDirectory)) ?? [])
            .map { stagingDirectory + "/" + $0 }
        let contentTarget = contentLink.flatMap { try? FileManager.default.destinationOfSymbolicLink(atPath: $0) }
        if let active = ledger.active {
            if activeTarget() != active || (contentLink != nil && contentTarget != path(of: active)) {
                try point(at: active, contentLink: contentLink)
            }
        } else if activeTarget() != nil || contentTarget != nil {
            try point(at: nil, contentLink: contentLink)
        }
        return Recovery(adoptedVersions: adopted, garbage: garbage)
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
            guard let summary = try? TreeCopier.summary(of: path(of: id)) else { continue }
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

/// What a copy produced.
struct TreeSummary {
    var digest: String
    var fileCount: Int
    var totalBytes: Int64
}

/// The tree digest's input, one line per entry in byte order of the relative paths:
/// `D path`, `F path mode size sha256`, `L path target`. Copying and verifying build
/// it through this one type, so the two can never disagree on the format.
struct TreeListing {
    private var hasher = SHA256()
    private var fileCount = 0
    private var totalBytes: Int64 = 0

    mutating func addDirectory(_ relative: String) {
        hasher.update(data: Data("D \(relative)\n".utf8))
    }

    mutating func addFile(_ relative: String, executable: Bool, size: Int64, hash: String) {
        fileCount += 1
        totalBytes += size
        hasher.update(data: Data("F \(relative) \(executable ? 755 : 644) \(size) \(hash)\n".utf8))
    }

    mutating func addLink(_ relative: String, target: String) {
        hasher.update(data: Data("L \(relative) \(target)\n".utf8))
    }

    var summary: TreeSummary {
        TreeSummary(digest: TreeCopier.hex(hasher.finalize()), fileCount: fileCount, totalBytes: totalBytes)
    }
}

/// Copies and hashes a content tree with lstat(2), so that no symlink is followed.
///
/// The tree digest is SHA-256 over a ``TreeListing``: it depends only on names,
/// contents, the executable bit and link targets.
struct TreeCopier {
    let source: String
    let destination: String

    func copy() throws(StoreError) -> TreeSummary {
        var listing = TreeListing()
        try ContentStore.syscall(destination, "create") {
            guard mkdir(destination, 0o700) == 0 else { throw Errno(rawValue: errno) }
        }
        var directories: [String] = [destination]
        var links: [(from: String, to: String, target: String)] = []
        for relative in try Self.entries(under: source) {
            let from = source + "/" + relative
            let to = destination + "/" + relative
            var info = stat()
            guard lstat(from, &info) == 0 else { throw .io(path: from, operation: "lstat", errno: errno) }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                try ContentStore.syscall(to, "create") {
                    guard mkdir(to, 0o700) == 0 else { throw Errno(rawValue: errno) }
                }
                directories.append(to)
                listing.addDirectory(relative)
            case S_IFREG:
                let executable = info.st_mode & 0o111 != 0
                // The size is what was copied, not what lstat said: a file that grows or
                // lies about its size (/proc) is recorded as it was stored.
                let (hash, size) = try Self.copyFile(from: from, to: to, executable: executable)
                listing.addFile(relative, executable: executable, size: size, hash: hash)
            case S_IFLNK:
                let target = try Self.linkTarget(from)
                guard Self.staysInside(link: relative, target: target) else {
                    throw .symlinkEscapes(path: from, target: target)
                }
                try ContentStore.syscall(to, "symlink") {
                    guard symlink(target, to) == 0 else { throw Errno(rawValue: errno) }
                }
                links.append((from, to, target))
                listing.addLink(relative, target: target)
            default:
                throw .unsupportedEntry(path: from, kind: Self.kindName(info.st_mode))
            }
        }
        // The lexical check alone misses a target that walks through another link
        // ("s/../x" with s -> "."): no component before the last may be a link.
        for link in links where Self.passesThroughLink(link: link.to, target: link.target, root: destination) {
            throw .symlinkEscapes(path: link.from, target: link.target)
        }
        // Read-only from the leaves up, and durable before the rename that publishes it.
        for directory in directories.reversed() {
            try ContentStore.syscall(directory, "fsync") { try DurableFile.syncDirectory(at: directory) }
            _ = chmod(directory, 0o555)
        }
        return listing.summary
    }

    /// The digest, file count and size of an already stored directory.
    static func summary(of root: String) throws(StoreError) -> TreeSummary {
        var listing = TreeListing()
        for relative in try entries(under: root) {
            let full = root + "/" + relative
            var info = stat()
            guard lstat(full, &info) == 0 else { throw .io(path: full, operation: "lstat", errno: errno) }
            switch info.st_mode & S_IFMT {
            case S_IFDIR: listing.addDirectory(relative)
            case S_IFREG:
                let (hash, size) = try hashFile(full)
                listing.addFile(relative, executable: info.st_mode & 0o111 != 0, size: size, hash: hash)
            case S_IFLNK: listing.addLink(relative, target: try linkTarget(full))
            default: throw .unsupportedEntry(path: full, kind: kindName(info.st_mode))
            }
        }
        return listing.summary
    }

    /// Relative paths of every entry below `root`, parents before children, sorted by bytes.
    static func entries(under root: String) throws(StoreError) -> [String] {
        var result: [String] = []
        var pending = [""]
        while let relative = pending.popLast() {
            let directory = relative.isEmpty ? root : root + "/" + relative
            let names: [String]
            do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
                throw .io(path: directory, operation: "read directory", errno: EACCES)
            }
            for name in names {
                let child = relative.isEmpty ? name : relative + "/" + name
                result.append(child)
                var info = stat()
                if lstat(root + "/" + child, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { pending.append(child) }
            }
        }
        return result.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// Copies one file, fsyncs it and makes it read-only.
    /// - Returns: the SHA-256 in hex and the number of bytes copied.
    static func copyFile(from: String, to: String, executable: Bool) throws(StoreError) -> (String, Int64) {
        do {
            let input = try FileDescriptor.open(FilePath(from), .readOnly, options: [.closeOnExec, .noFollow])
            defer { try? input.close() }
            let output = try FileDescriptor.open(
                FilePath(to), .writeOnly, options: [.create, .exclusiveCreate, .closeOnExec], permissions: [.ownerReadWrite])
            defer { try? output.close() }
            let result = try stream(input, copyingTo: output)
            try DurableFile.fsync(output)
            guard fchmod(output.rawValue, executable ? 0o555 : 0o444) == 0 else { throw Errno(rawValue: errno) }
            return result
        } catch let error as Errno {
            throw .io(path: to, operation: "copy", errno: error.rawValue)
        } catch {
            throw .io(path: to, operation: "copy", errno: EIO)
        }
    }

    /// Hashes one stored file.
    /// - Returns: the SHA-256 in hex and the number of bytes read.
    static func hashFile(_ path: String) throws(StoreError) -> (String, Int64) {
        do {
            let input = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec, .noFollow])
            defer { try? input.close() }
            return try stream(input, copyingTo: nil)
        } catch let error as Errno {
            throw .io(path: path, operation: "read", errno: error.rawValue)
        } catch {
            throw .io(path: path, operation: "read", errno: EIO)
        }
    }

    /// Reads `input` to its end, hashing what it reads and writing it to `output` when given.
    /// - Returns: the SHA-256 in hex and the number of bytes read.
    private static func stream(_ input: FileDescriptor, copyingTo output: FileDescriptor?) throws -> (String, Int64) {
        var hasher = SHA256()
        var total: Int64 = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = try buffer.withUnsafeMutableBytes { try input.read(into: $0) }
            if count == 0 { break }
            try buffer.withUnsafeBytes { bytes in
                let chunk = UnsafeRawBufferPointer(rebasing: bytes[..<count])
                hasher.update(bufferPointer: chunk)
                _ = try output?.writeAll(chunk)
            }
            total += Int64(count)
        }
        return (hex(hasher.finalize()), total)
    }

    static func linkTarget(_ path: String) throws(StoreError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count >= 0 else { throw .io(path: path, operation: "readlink", errno: errno) }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether a relative symlink at `link` (relative to the tree root) resolves, lexically, inside the tree.
    static func staysInside(link: String, target: String) -> Bool {
        guard !target.hasPrefix("/"), !target.isEmpty else { return false }
        var components = link.split(separator: "/").dropLast().map(String.init)
        for part in target.split(separator: "/") {
            switch part {
            case ".": continue
            case "..":
                guard !components.isEmpty else { return false }
                components.removeLast()
            default: components.append(String(part))
            }
        }
        return true
    }

    /// Whether resolving `target` from the link at absolute path `link` (inside `root`)
    /// passes through a symlink before its last component. Components that do not exist
    /// stay so (the copy is immutable), so a lexically contained path stays contained.
    static func passesThroughLink(link: String, target: String, root: String) -> Bool {
        var components = link.dropFirst(root.count).split(separator: "/").dropLast().map(String.init)
        let parts = target.split(separator: "/").map(String.init)
        for (index, part) in parts.enumerated() {
            switch part {
            case ".": continue
            case "..": if !components.isEmpty { components.removeLast() }
            default: components.append(part)
            }
            guard index < parts.count - 1, part != ".." else { continue }
            var info = stat()
            if lstat(root + "/" + components.joined(separator: "/"), &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK {
                return true
            }
        }
        return false
    }

    static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: return "FIFO"
        case S_IFSOCK: return "socket"
        case S_IFCHR: return "character device"
        case S_IFBLK: return "block device"
        default: return "special file"
        }
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
