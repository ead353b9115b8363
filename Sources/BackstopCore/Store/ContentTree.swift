import Crypto
import Foundation
import SystemPackage

/// The limits and the signature rule a bundle must meet to be staged (per agent:
/// `max_bundle_bytes`, `max_files`, `require_signature`, `trusted_keys`).
public struct StagingRules: Sendable, Equatable {
    /// Most bytes of regular-file data a bundle may hold (after decompression), `max_bundle_bytes`.
    public var maxBundleBytes: Int64 = 2 << 30
    /// Most entries (files, directories and symlinks) a bundle may hold, `max_files`. The
    /// directories an archive implies (`a` and `a/b` for an entry `a/b/f` it does not list) count too.
    public var maxFiles = 100_000
    /// Whether a bundle must carry a manifest signed by a trusted key, `require_signature`.
    public var requireSignature = false
    /// The directory of trusted Ed25519 public keys (`*.pem`), `trusted_keys`.
    public var trustedKeysDirectory = "/etc/backstop/keys"

    public init() {}
}

/// What a copy or an extraction produced besides the tree: the bundle's manifest
/// and signature, when it carried them (``BundleManifest/directoryName``).
struct BundleMetadata {
    var manifest: Data?
    var signature: Data?
}

/// Counts what a bundle holds against ``StagingRules`` while it is read, so that a
/// bundle over a limit is refused before it fills the disk.
struct StagingBudget {
    let rules: StagingRules
    private(set) var entries = 0
    private(set) var bytes: Int64 = 0

    init(_ rules: StagingRules) { self.rules = rules }

    /// Counts one more entry.
    /// - Throws: ``StoreError/limitExceeded(_:)`` past `max_files`.
    mutating func admitEntry(_ path: String) throws(StoreError) {
        entries += 1
        if entries > rules.maxFiles {
            throw .limitExceeded("the bundle holds more than max_files = \(rules.maxFiles) entries (at \(EntryName.escaped(path)))")
        }
    }

    /// Counts `count` more bytes of file data.
    /// - Throws: ``StoreError/limitExceeded(_:)`` past `max_bundle_bytes`.
    mutating func admitBytes(_ count: Int64, path: String) throws(StoreError) {
        bytes += count
        if bytes > rules.maxBundleBytes {
            throw .limitExceeded("the bundle holds more than max_bundle_bytes = \(rules.maxBundleBytes) bytes (at \(EntryName.escaped(path)))")
        }
    }
}

/// How a tree digest encodes a tree before SHA-256 hashes it. A version's record names the
/// format of its digest (`digest_format`); records without one are ``lines``.
public enum TreeDigestFormat: Int, Codable, Sendable {
    /// One text line per entry: `D path`, `F path mode size sha256`, `L path target`. Not
    /// injective (a space may be in a name or a target: a symlink `a b` -> `c` and a symlink
    /// `a` -> `b c` give the same line), so content could take a quarantined version's
    /// digest. Read only to check versions recorded with it before moving them to
    /// ``records``, and to refuse content identical to a quarantined version still recorded with it.
    case lines = 1
    /// Length-prefixed binary records (``TreeInventory/digest(_:)`` and README, "The tree
    /// digest"): an injective encoding of each entry's type, name, mode, size, content and target.
    case records = 2

    /// The format of every digest the store computes now.
    public static let current = TreeDigestFormat.records
}

/// What a tree holds, entry by entry, in byte order of the relative paths.
///
/// Its digest depends only on names, contents, the executable bit and link targets, so a
/// version keeps its digest wherever it is stored.
struct TreeInventory {
    enum Entry: Equatable {
        case directory
        case file(executable: Bool, size: Int64, sha256: String)
        case symlink(target: String)
    }

    private(set) var entries: [(path: String, entry: Entry)] = []

    /// Reads every entry below `root` with lstat(2) (no symlink is followed) and hashes every file.
    /// - Parameter excluding: a top-level name left out (the bundle's metadata directory).
    /// - Throws: ``StoreError`` for an entry that is not a directory, regular file or symlink, or an I/O error.
    static func scan(_ root: String, excluding: String? = nil) throws(StoreError) -> TreeInventory {
        var inventory = TreeInventory()
        for relative in try TreeCopier.entries(under: root, excluding: excluding) {
            let full = root + "/" + relative
            var info = stat()
            guard lstat(full, &info) == 0 else { throw .io(path: full, operation: "lstat", errno: errno) }
            switch info.st_mode & S_IFMT {
            case S_IFDIR: inventory.entries.append((relative, .directory))
            case S_IFREG:
                let (hash, size) = try TreeCopier.hashFile(full)
                inventory.entries.append((relative, .file(executable: info.st_mode & 0o111 != 0, size: size, sha256: hash)))
            case S_IFLNK: inventory.entries.append((relative, .symlink(target: try TreeCopier.linkTarget(full))))
            default: throw .unsupportedEntry(path: full, kind: TreeCopier.kindName(info.st_mode))
            }
        }
        return inventory
    }

    /// The tree digest in `format`, lowercase hex.
    ///
    /// ``TreeDigestFormat/records``: SHA-256 over the 16 bytes `backstop-tree/2\n`, then one
    /// record per entry in byte order of the paths. A record is a type byte (`D`, `F` or `L`)
    /// and the path as a 4-byte big-endian length and its UTF-8 bytes; a file adds its mode
    /// (4 bytes, big-endian: 0o755 when executable, else 0o644), its size (8 bytes,
    /// big-endian) and the 32 bytes of its contents' SHA-256; a symlink adds its target as
    /// length and bytes like the path. Each record parses in one way only, so two trees
    /// that differ give different byte strings.
    func digest(_ format: TreeDigestFormat) -> String {
        var hasher = SHA256()
        switch format {
        case .lines:
            for (path, entry) in entries {
                let line: String
                switch entry {
                case .directory: line = "D \(path)\n"
                case .file(let executable, let size, let sha256): line = "F \(path) \(executable ? 755 : 644) \(size) \(sha256)\n"
                case .symlink(let target): line = "L \(path) \(target)\n"
                }
                hasher.update(data: Data(line.utf8))
            }
        case .records:
            var bytes = Array("backstop-tree/2\n".utf8)
            func append<Integer: FixedWidthInteger>(_ value: Integer) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
            func append(_ text: String) {
                append(UInt32(text.utf8.count))
                bytes += text.utf8
            }
            for (path, entry) in entries {
                switch entry {
                case .directory:
                    bytes += "D".utf8
                    append(path)
                case .file(let executable, let size, let sha256):
                    bytes += "F".utf8
                    append(path)
                    append(UInt32(executable ? 0o755 : 0o644))
                    append(UInt64(size))
                    bytes += TreeCopier.bytes(hex: sha256)
                case .symlink(let target):
                    bytes += "L".utf8
                    append(path)
                    append(target)
                }
                // Hashed as it goes: a tree of many entries need not be held whole.
                hasher.update(data: bytes)
                bytes.removeAll(keepingCapacity: true)
            }
            hasher.update(data: bytes)
        }
        return TreeCopier.hex(hasher.finalize())
    }

    /// The digest (in ``TreeDigestFormat/current``), file count and size.
    var summary: TreeSummary {
        var fileCount = 0
        var totalBytes: Int64 = 0
        for case (_, .file(_, let size, _)) in entries {
            fileCount += 1
            totalBytes += size
        }
        return TreeSummary(digest: digest(.current), fileCount: fileCount, totalBytes: totalBytes)
    }
}

/// A tree's digest, file count and size.
struct TreeSummary {
    var digest: String
    var fileCount: Int
    var totalBytes: Int64
}

/// Copies a content directory, refusing what content may not hold: FIFOs, sockets,
/// device nodes, hard links, setuid or setgid bits, symlinks that leave the tree, and more
/// than the ``StagingRules`` allow.
///
/// The source is read only through descriptors, starting from the open top directory:
/// its path may belong to another mount namespace (the caller's), and the tree may be
/// writable by others while it is copied. Each entry is opened relative to its parent's
/// descriptor with `O_NOFOLLOW` (openat(2), fstatat(2) with `AT_SYMLINK_NOFOLLOW`) and
/// checked again on the open descriptor, so that no symlink, even one swapped in for a
/// directory mid-copy, leads the copy outside the tree; symlinks are copied as links.
struct TreeCopier {
    /// The open top directory of the source; the caller closes it.
    let root: Int32
    /// The caller's path of the source, named in errors only.
    let source: String
    let destination: String
    let rules: StagingRules

    /// Copies the tree (files fsynced and read-only; directories left writable for
    /// ``sealDirectories(under:listedIn:)``) and reads the bundle metadata next to it.
    /// - Throws: ``StoreError`` naming the entry at fault.
    func copy() throws(StoreError) -> BundleMetadata {
        var budget = StagingBudget(rules)
        var links: [(from: String, to: String, target: String)] = []
        try copyDirectory(root, relative: "", budget: &budget, links: &links)
        // The lexical check alone misses a target that walks through another link
        // ("s/../x" with s -> "."): no component before the last may be a link.
        for link in links where Self.passesThroughLink(link: link.to, target: link.target, root: destination) {
            throw .symlinkEscapes(path: link.from, target: link.target)
        }
        return try readMetadata(root)
    }

    private func copyDirectory(
        _ directory: Int32, relative: String, budget: inout StagingBudget, links: inout [(from: String, to: String, target: String)]
    ) throws(StoreError) {
        for name in try Self.names(in: directory, path: source + "/" + relative) {
            if relative.isEmpty && name == BundleManifest.directoryName { continue }
            let child = relative.isEmpty ? name : relative + "/" + name
            try budget.admitEntry(child)
            let from = source + "/" + child
            let to = destination + "/" + child
            try BundleArchive.checkName(child, of: from)
            try BundleManifest.checkNotNested(child, of: from)
            var info = stat()
            guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { throw .io(path: from, operation: "lstat", errno: errno) }
            if info.st_mode & (S_ISUID | S_ISGID) != 0 { throw .refusedEntry(path: from, reason: "has the setuid or setgid bit") }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                let descriptor = try Self.openEntry(directory, name, path: from, flags: O_DIRECTORY, like: info)
                defer { close(descriptor) }
                try ContentStore.syscall(to, "create") {
                    guard mkdir(to, 0o700) == 0 else { throw Errno(rawValue: errno) }
                }
                try copyDirectory(descriptor, relative: child, budget: &budget, links: &links)
            case S_IFREG:
                // Another name of the same file may sit outside the tree, where it can change.
                if info.st_nlink > 1 { throw .refusedEntry(path: from, reason: "is a hard link") }
                let descriptor = try Self.openEntry(directory, name, path: from, flags: O_NONBLOCK, like: info)
                defer { close(descriptor) }
                try Self.copyFile(descriptor, from: from, to: to, executable: info.st_mode & 0o111 != 0, budget: &budget)
            case S_IFLNK:
                let target = try Self.linkTarget(at: directory, name, path: from)
                try BundleArchive.checkName(target, of: from)
                guard Self.staysInside(link: child, target: target) else {
                    throw .symlinkEscapes(path: from, target: target)
                }
                try ContentStore.syscall(to, "symlink") {
                    guard symlink(target, to) == 0 else { throw Errno(rawValue: errno) }
                }
                links.append((from, to, target))
            default:
                throw .unsupportedEntry(path: from, kind: Self.kindName(info.st_mode))
            }
        }
    }

    /// Opens entry `name` of `directory` without following a symlink and checks that it is
    /// still what fstatat(2) saw (same inode, same type, one link for a file).
    private static func openEntry(_ directory: Int32, _ name: String, path: String, flags: Int32, like info: stat) throws(StoreError) -> Int32 {
        let descriptor = openat(directory, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | flags)
        guard descriptor >= 0 else {
            throw errno == ELOOP
                ? .refusedEntry(path: path, reason: "changed into a symlink while it was copied")
                : .io(path: path, operation: "open", errno: errno)
        }
        var opened = stat()
        guard fstat(descriptor, &opened) == 0, opened.st_dev == info.st_dev, opened.st_ino == info.st_ino,
            opened.st_mode & S_IFMT == info.st_mode & S_IFMT, opened.st_mode & (S_ISUID | S_ISGID) == 0,
            opened.st_mode & S_IFMT != S_IFREG || opened.st_nlink == 1
        else {
            close(descriptor)
            throw .refusedEntry(path: path, reason: "changed while it was copied")
        }
        return descriptor
    }

    /// The names in an open directory (readdir(3) on a duplicate of its descriptor), sorted by bytes.
    /// - Throws: ``StoreError/refusedEntry(path:reason:)`` for a name that is not valid UTF-8.
    private static func names(in directory: Int32, path: String) throws(StoreError) -> [String] {
        let duplicate = dup(directory)
        guard duplicate >= 0, let stream = fdopendir(duplicate) else {
            if duplicate >= 0 { close(duplicate) }
            throw .io(path: path, operation: "read directory", errno: errno)
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var names: [String] = []
        // readdir(3) returns NULL at the end and on an error alike; errno tells them apart.
        errno = 0
        var undecodable: [UInt8]?
        while let entry = readdir(stream) {
            let bytes = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if let name = EntryName.decode(bytes) {
                if name != "." && name != ".." { names.append(name) }
            } else if undecodable == nil {
                undecodable = bytes
            }
            errno = 0
        }
        guard errno == 0 else { throw .io(path: path, operation: "read directory", errno: errno) }
        if let undecodable { _ = try EntryName.text(undecodable, in: path) }
        return names.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// The manifest and signature in the source's metadata directory, read through descriptors too.
    private func readMetadata(_ root: Int32) throws(StoreError) -> BundleMetadata {
        let path = source + "/" + BundleManifest.directoryName
        var info = stat()
        guard fstatat(root, BundleManifest.directoryName, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return BundleMetadata() }
        guard (info.st_mode & S_IFMT) == S_IFDIR else {
            throw .refusedEntry(path: path, reason: "is not a directory; \(BundleManifest.directoryName)/ holds the manifest and signature")
        }
        let directory = try Self.openEntry(root, BundleManifest.directoryName, path: path, flags: O_DIRECTORY, like: info)
        defer { close(directory) }
        let allowed = [BundleManifest.manifestName, BundleManifest.signatureName]
        if let other = try Self.names(in: directory, path: path).first(where: { !allowed.contains($0) }) {
            throw .refusedEntry(path: path + "/" + other, reason: "is not a manifest or signature; \(BundleManifest.directoryName)/ holds only those")
        }
        return BundleMetadata(
            manifest: try Self.readSmallFile(directory, BundleManifest.manifestName, path: path + "/" + BundleManifest.manifestName),
            signature: try Self.readSmallFile(directory, BundleManifest.signatureName, path: path + "/" + BundleManifest.signatureName))
    }

    /// The contents of a bundle metadata file, nil when there is none.
    /// - Throws: ``StoreError/refusedEntry(path:reason:)`` for a non-regular or oversized file.
    private static func readSmallFile(_ directory: Int32, _ name: String, path: String) throws(StoreError) -> Data? {
        var info = stat()
        guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw .refusedEntry(path: path, reason: "is not a regular file") }
        let descriptor = try openEntry(directory, name, path: path, flags: O_NONBLOCK, like: info)
        let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        let data = (try? handle.read(upToCount: BundleManifest.maxManifestBytes + 1)) ?? Data()
        guard data.count <= BundleManifest.maxManifestBytes else {
            throw .refusedEntry(path: path, reason: "is larger than \(BundleManifest.maxManifestBytes) bytes")
        }
        return data
    }

    /// Makes `root` and the directories `inventory` (its scan) lists read-only and durable,
    /// from the leaves up (the inventory lists parents before children).
    /// - Throws: ``StoreError/io(path:operation:errno:)``.
    static func sealDirectories(under root: String, listedIn inventory: TreeInventory) throws(StoreError) {
        let directories = [root] + inventory.entries.compactMap { $0.entry == .directory ? root + "/" + $0.path : nil }
        for directory in directories.reversed() {
            try ContentStore.syscall(directory, "fsync") { try DurableFile.syncDirectory(at: directory) }
            _ = chmod(directory, 0o555)
        }
    }

    /// Relative paths of every entry below `root`, parents before children, sorted by bytes.
    /// - Parameter excluding: a top-level name left out.
    /// - Throws: ``StoreError/io(path:operation:errno:)`` for a directory that cannot be read,
    ///   ``StoreError/refusedEntry(path:reason:)`` for a name that is not valid UTF-8.
    static func entries(under root: String, excluding: String? = nil) throws(StoreError) -> [String] {
        var result: [String] = []
        var pending = [""]
        while let relative = pending.popLast() {
            let directory = relative.isEmpty ? root : root + "/" + relative
            let descriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard descriptor >= 0 else { throw .io(path: directory, operation: "read directory", errno: errno) }
            defer { close(descriptor) }
            let names = try Self.names(in: descriptor, path: directory)
            for name in names where !(relative.isEmpty && name == excluding) {
                let child = relative.isEmpty ? name : relative + "/" + name
                result.append(child)
                var info = stat()
                if lstat(root + "/" + child, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { pending.append(child) }
            }
        }
        return result.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
    }

    /// Copies the open file `input` (named `from`) to `to`, fsyncs the copy and makes it
    /// read-only, counting its bytes against `budget`.
    static func copyFile(_ input: Int32, from: String, to: String, executable: Bool, budget: inout StagingBudget) throws(StoreError) {
        do {
            let source = FileDescriptor(rawValue: input)
            let output = try StoredFile(path: to, executable: executable)
            defer { output.close() }
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let count = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
                if count == 0 { break }
                try budget.admitBytes(Int64(count), path: from)
                try buffer.withUnsafeBytes { try output.write(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
            }
            try output.seal()
        } catch let error as StoreError {
            throw error
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
            var hasher = SHA256()
            var total: Int64 = 0
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let count = try buffer.withUnsafeMutableBytes { try input.read(into: $0) }
                if count == 0 { break }
                buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<count])) }
                total += Int64(count)
            }
            return (hex(hasher.finalize()), total)
        } catch let error as Errno {
            throw .io(path: path, operation: "read", errno: error.rawValue)
        } catch {
            throw .io(path: path, operation: "read", errno: EIO)
        }
    }

    /// The target of symlink `name` in the open directory `directory` (readlinkat(2)).
    /// - Throws: ``StoreError/refusedEntry(path:reason:)`` for a target that is not valid UTF-8.
    static func linkTarget(at directory: Int32, _ name: String, path: String) throws(StoreError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlinkat(directory, name, &buffer, buffer.count - 1)
        guard count >= 0 else { throw .io(path: path, operation: "readlink", errno: errno) }
        return try EntryName.text(buffer[..<count].map { UInt8(bitPattern: $0) }, linkOf: path)
    }

    static func linkTarget(_ path: String) throws(StoreError) -> String {
        try linkTarget(at: AT_FDCWD, path, path: path)
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

    /// The bytes of a hex string (two digits each; anything else reads as 0).
    static func bytes(hex: String) -> [UInt8] {
        let digits = Array(hex.utf8)
        return stride(from: 0, to: digits.count - 1, by: 2).map {
            UInt8(String(decoding: digits[$0...$0 + 1], as: UTF8.self), radix: 16) ?? 0
        }
    }
}

/// A file being written into a staged copy: created exclusively (a name that comes
/// twice is refused), fsynced and made read-only (0444, or 0555 when executable) by ``seal()``.
struct StoredFile {
    private let descriptor: FileDescriptor
    private let path: String
    private let executable: Bool

    /// - Throws: `Errno` from open(2); `EEXIST` when the name exists.
    init(path: String, executable: Bool) throws {
        descriptor = try FileDescriptor.open(
            FilePath(path), .writeOnly, options: [.create, .exclusiveCreate, .closeOnExec, .noFollow],
            permissions: [.ownerReadWrite])
        self.path = path
        self.executable = executable
    }

    /// - Throws: `Errno` from write(2).
    func write(_ bytes: UnsafeRawBufferPointer) throws {
        _ = try descriptor.writeAll(bytes)
    }

    /// Sets the file's size with ftruncate(2): what lies past the data written reads as zeros.
    /// - Throws: `Errno` from ftruncate(2).
    func extend(to size: Int64) throws {
        guard ftruncate(descriptor.rawValue, off_t(size)) == 0 else { throw Errno(rawValue: errno) }
    }

    /// fsync(2), then read-only.
    /// - Throws: `Errno` from fsync(2) or fchmod(2).
    func seal() throws {
        try DurableFile.fsync(descriptor, of: path)
        guard fchmod(descriptor.rawValue, executable ? 0o555 : 0o444) == 0 else { throw Errno(rawValue: errno) }
    }

    func close() { try? descriptor.close() }
}
