import CArchive
import Foundation
import SystemPackage

/// Reads a tar archive (plain, gzip, xz or zstd) with libarchive (archive_read(3)) and
/// writes its tree into an empty directory, checking each entry before anything of it
/// reaches the disk.
///
/// Refused, naming the entry: absolute paths, `..` components, names and link targets
/// that are not valid UTF-8 or hold control characters, a name that comes twice, hard
/// links, device nodes, FIFOs, sockets, setuid or setgid bits, symlinks whose target
/// leaves the tree, unknown entries in the metadata directory, and more entries or bytes
/// than the ``StagingRules`` allow (counted while decompressing, so a bomb stops at the
/// limit; the directories an entry's path implies count as entries, and a sparse file
/// counts with its full size). Sparse files (GNU and pax sparse formats) are written with
/// their full size, holes as zeros. Symlinks are made after every other entry, so no
/// entry is ever written through one.
struct BundleArchive {
    /// Where the archive's bytes come from.
    enum Source {
        /// An open regular file (not closed here), read from its start; `name` is the caller's path of it.
        case descriptor(Int32, name: String)
        /// Bytes in memory (the fuzz target).
        case memory([UInt8])
    }

    let source: Source
    let destination: String
    let rules: StagingRules

    /// The name shown for the archive in errors.
    private var name: String {
        switch source {
        case .descriptor(_, let name): return name
        case .memory: return "bundle"
        }
    }

    /// Extracts the tree into `destination` (which exists and is empty); files end
    /// fsynced and read-only, directories writable for ``TreeCopier/sealDirectories(under:listedIn:)``.
    /// - Returns: the manifest and signature found under ``BundleManifest/directoryName``.
    /// - Throws: ``StoreError``: ``StoreError/notABundle(path:message:)`` for what libarchive
    ///   cannot read, ``StoreError/refusedEntry(path:reason:)`` and the others for what it finds.
    func extract() throws(StoreError) -> BundleMetadata {
        guard let archive = archive_read_new() else { throw .io(path: name, operation: "read", errno: ENOMEM) }
        defer { archive_read_free(archive) }
        archive_read_support_format_tar(archive)
        archive_read_support_filter_gzip(archive)
        archive_read_support_filter_xz(archive)
        archive_read_support_filter_zstd(archive)
        switch source {
        case .descriptor(let descriptor, _):
            guard lseek(descriptor, 0, SEEK_SET) == 0 else { throw .io(path: name, operation: "seek", errno: errno) }
            // archive_read_open_fd(3) reads through the descriptor and leaves it open.
            guard archive_read_open_fd(archive, descriptor, 1 << 16) == ARCHIVE_OK else {
                throw .notABundle(path: name, message: Self.message(archive))
            }
            return try entries(of: archive)
        case .memory(let bytes):
            // libarchive reads the buffer until archive_read_free, within this scope.
            let result = bytes.withUnsafeBytes { buffer in
                Result { () throws(StoreError) -> BundleMetadata in
                    guard archive_read_open_memory(archive, buffer.baseAddress, buffer.count) == ARCHIVE_OK else {
                        throw .notABundle(path: name, message: Self.message(archive))
                    }
                    return try entries(of: archive)
                }
            }
            return try result.get()
        }
    }

    private func entries(of archive: OpaquePointer) throws(StoreError) -> BundleMetadata {
        var budget = StagingBudget(rules)
        var metadata = BundleMetadata()
        var links: [(path: String, target: String)] = []
        var seen = Set<String>()
        while true {
            var entry: OpaquePointer?
            let status = archive_read_next_header(archive, &entry)
            if status == ARCHIVE_EOF { break }
            guard status == ARCHIVE_OK || status == ARCHIVE_WARN, let entry else {
                throw .notABundle(path: name, message: Self.message(archive))
            }
            // The name's bytes as the archive holds them (libarchive converts to UTF-8 only
            // from the locale's charset, and repairs what it cannot convert): they must be UTF-8.
            guard let rawName = archive_entry_pathname(entry) ?? archive_entry_pathname_utf8(entry) else {
                throw .refusedEntry(path: "entry \(budget.entries + 1)", reason: "has no name")
            }
            let name = try EntryName.text(cString: rawName)
            let path = try Self.normalizedPath(name)
            try budget.admitEntry(path.isEmpty ? "." : path)
            let type = archive_entry_filetype(entry)
            if path.isEmpty {
                // "./", the top itself: a plain directory, nothing else (its data would go uncounted).
                guard type == S_IFDIR, archive_entry_hardlink(entry) == nil, archive_entry_mode(entry) & (S_ISUID | S_ISGID) == 0 else {
                    throw .refusedEntry(path: name, reason: "names the top of the bundle, which must be a plain directory")
                }
                continue
            }
            if type != S_IFDIR, !seen.insert(path).inserted {
                throw .refusedEntry(path: path, reason: "appears twice in the bundle")
            }
            if archive_entry_hardlink(entry) != nil { throw .refusedEntry(path: path, reason: "is a hard link") }
            if archive_entry_mode(entry) & (S_ISUID | S_ISGID) != 0 {
                throw .refusedEntry(path: path, reason: "has the setuid or setgid bit")
            }
            if path == BundleManifest.directoryName || path.hasPrefix(BundleManifest.directoryName + "/") {
                try readMetadata(archive, entry: entry, path: path, type: type, into: &metadata)
                continue
            }
            try BundleManifest.checkNotNested(path, of: path)
            let full = destination + "/" + path
            switch type {
            case S_IFDIR:
                try makeDirectories(path, listed: true, budget: &budget)
            case S_IFREG:
                try makeDirectories(Self.parent(of: path), listed: false, budget: &budget)
                let size = archive_entry_size_is_set(entry) != 0 ? Int64(archive_entry_size(entry)) : nil
                try write(archive, to: full, path: path, executable: archive_entry_mode(entry) & 0o111 != 0, size: size, budget: &budget)
            case S_IFLNK:
                let target = try (archive_entry_symlink(entry) ?? archive_entry_symlink_utf8(entry)).map { (raw) throws(StoreError) in
                    try EntryName.text(cString: raw, linkOf: path)
                } ?? ""
                try Self.checkName(target, of: path)
                guard TreeCopier.staysInside(link: path, target: target) else {
                    throw .symlinkEscapes(path: path, target: target)
                }
                links.append((path, target))
            default:
                throw .unsupportedEntry(path: path, kind: TreeCopier.kindName(type))
            }
        }
        for link in links {
            try makeDirectories(Self.parent(of: link.path), listed: false, budget: &budget)
            let full = destination + "/" + link.path
            guard symlink(link.target, full) == 0 else {
                if errno == EEXIST { throw .refusedEntry(path: link.path, reason: "appears twice in the bundle") }
                if errno == ENAMETOOLONG { throw Self.tooLong(link.path) }
                throw .io(path: full, operation: "symlink", errno: errno)
            }
        }
        for link in links where TreeCopier.passesThroughLink(link: destination + "/" + link.path, target: link.target, root: destination) {
            throw .symlinkEscapes(path: link.path, target: link.target)
        }
        return metadata
    }

    /// Keeps the manifest and the signature in memory; nothing else may sit in the metadata directory.
    private func readMetadata(
        _ archive: OpaquePointer, entry: OpaquePointer, path: String, type: mode_t, into metadata: inout BundleMetadata
    ) throws(StoreError) {
        let directory = BundleManifest.directoryName
        if path == directory, type == S_IFDIR { return }
        guard type == S_IFREG,
            path == directory + "/" + BundleManifest.manifestName || path == directory + "/" + BundleManifest.signatureName
        else {
            throw .refusedEntry(path: path, reason: "is not a manifest or signature; \(directory)/ holds only those")
        }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = buffer.withUnsafeMutableBytes { archive_read_data(archive, $0.baseAddress, $0.count) }
            if count == 0 { break }
            guard count > 0 else { throw .notABundle(path: name, message: Self.message(archive)) }
            data.append(contentsOf: buffer[..<count])
            if data.count > BundleManifest.maxManifestBytes {
                throw .refusedEntry(path: path, reason: "is larger than \(BundleManifest.maxManifestBytes) bytes")
            }
        }
        if path.hasSuffix("/" + BundleManifest.manifestName) { metadata.manifest = data } else { metadata.signature = data }
    }

    /// mkdir -p below the destination; an existing component must be a directory made here.
    /// Each directory made counts against `max_files`, but `relative` itself when it is
    /// `listed`, an entry of the archive (counted with its header).
    private func makeDirectories(_ relative: String, listed: Bool, budget: inout StagingBudget) throws(StoreError) {
        var current = destination
        let components = relative.split(separator: "/")
        for (index, component) in components.enumerated() {
            current += "/" + component
            let relativePath = String(current.dropFirst(destination.count + 1))
            if mkdir(current, 0o700) == 0 {
                if !listed || index < components.count - 1 { try budget.admitEntry(relativePath) }
                continue
            }
            if errno == ENAMETOOLONG { throw Self.tooLong(relativePath) }
            var info = stat()
            guard errno == EEXIST, lstat(current, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
                throw .refusedEntry(path: relativePath, reason: "appears twice in the bundle")
            }
        }
    }

    /// Writes the entry's data to `full`. archive_read_data(3) fills the holes of a sparse
    /// file with zeros but stops at its last data block, so a file that ends in a hole (or
    /// is one) is then extended to the `size` its header gives; the extension reads as zeros.
    private func write(
        _ archive: OpaquePointer, to full: String, path: String, executable: Bool, size: Int64?, budget: inout StagingBudget
    ) throws(StoreError) {
        let file: StoredFile
        do { file = try StoredFile(path: full, executable: executable) } catch let error as Errno {
            if error == .fileExists { throw .refusedEntry(path: path, reason: "appears twice in the bundle") }
            if error == .fileNameTooLong { throw Self.tooLong(path) }
            throw .io(path: full, operation: "create", errno: error.rawValue)
        } catch {
            throw .io(path: full, operation: "create", errno: EIO)
        }
        defer { file.close() }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var written: Int64 = 0
        while true {
            let count = buffer.withUnsafeMutableBytes { archive_read_data(archive, $0.baseAddress, $0.count) }
            if count == 0 { break }
            guard count > 0 else { throw .notABundle(path: name, message: Self.message(archive)) }
            try budget.admitBytes(Int64(count), path: path)
            try ContentStore.syscall(full, "write") {
                try buffer.withUnsafeBytes { try file.write(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
            }
            written += Int64(count)
        }
        if let size, size > written {
            try budget.admitBytes(size - written, path: path)
            try ContentStore.syscall(full, "extend") { try file.extend(to: size) }
        }
        try ContentStore.syscall(full, "fsync") { try file.seal() }
    }

    /// A name or path longer than the file system takes (NAME_MAX, PATH_MAX with the store's prefix).
    private static func tooLong(_ path: String) -> StoreError {
        .refusedEntry(path: String(path.prefix(120)) + (path.count > 120 ? "…" : ""), reason: "has a name or path longer than the file system allows")
    }

    /// An entry's path relative to the tree: `./` and empty components dropped.
    /// - Throws: ``StoreError/refusedEntry(path:reason:)`` for an absolute path, a `..`
    ///   component or a control character.
    static func normalizedPath(_ raw: String) throws(StoreError) -> String {
        if raw.hasPrefix("/") { throw .refusedEntry(path: raw, reason: "is an absolute path") }
        let components = raw.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        if components.contains("..") { throw .refusedEntry(path: raw, reason: "has a \"..\" component") }
        let path = components.joined(separator: "/")
        try checkName(path, of: raw)
        return path
    }

    /// Refuses names and link targets with control characters (C0, DEL and C1): they would
    /// garble every listing an operator reads, and a terminal would act on them.
    static func checkName(_ text: String, of path: String) throws(StoreError) {
        if text.unicodeScalars.contains(where: EntryName.isControl) {
            throw .refusedEntry(path: path, reason: "has a control character in its name or target")
        }
    }

    /// The relative path of the directory holding `path`, "" at the top.
    private static func parent(of path: String) -> String {
        path.split(separator: "/").dropLast().joined(separator: "/")
    }

    private static func message(_ archive: OpaquePointer) -> String {
        archive_error_string(archive).map { String(cString: $0) } ?? "not a tar archive"
    }
}
