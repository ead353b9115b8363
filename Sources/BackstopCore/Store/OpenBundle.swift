import Foundation
import SystemPackage

/// A content bundle held open for staging: a directory, or a regular file holding a tar
/// archive. The store reads it only through ``descriptor``, so its path is resolved once,
/// by whoever opened it: `backstopctl`, as the caller and in the caller's mount namespace
/// (a path in its private /tmp works), never by backstopd on the caller's behalf.
public struct OpenBundle: Sendable {
    /// What the descriptor is open on.
    public enum Kind: Sendable, Equatable {
        /// A content directory, copied entry by entry (openat(2) below it).
        case directory
        /// A regular file read as a tar archive (plain, gzip, xz or zstd).
        case archive
    }

    /// The open directory or file. An ``OpenBundle`` made with ``open(_:)`` owns it (see
    /// ``close()``); one made with ``init(descriptor:path:)`` only borrows it.
    public let descriptor: FileDescriptor
    /// The path the caller opened it by, as the caller wrote it: for messages and records only.
    public let path: String
    /// A directory or an archive, from fstat(2) of the descriptor.
    public let kind: Kind

    /// Checks, with fstat(2), that an open descriptor is a directory or a regular file; does not take it over.
    /// - Parameter path: the caller's path of it, named in errors.
    /// - Throws: ``StoreError/unsupportedBundle(path:kind:)`` for anything else (a FIFO, a
    ///   device, a socket), ``StoreError/io(path:operation:errno:)`` when fstat(2) fails.
    public init(descriptor: FileDescriptor, path: String) throws(StoreError) {
        var info = stat()
        guard fstat(descriptor.rawValue, &info) == 0 else { throw .io(path: path, operation: "fstat", errno: errno) }
        switch info.st_mode & S_IFMT {
        case S_IFDIR: kind = .directory
        case S_IFREG: kind = .archive
        default: throw .unsupportedBundle(path: path, kind: TreeCopier.kindName(info.st_mode))
        }
        self.descriptor = descriptor
        self.path = path
    }

    /// Opens `path` as the calling process, following symlinks as open(2) does: a directory
    /// with `O_RDONLY|O_DIRECTORY|O_CLOEXEC`, else a file with `O_RDONLY|O_CLOEXEC`, plus
    /// `O_NONBLOCK|O_NOCTTY` so that a FIFO or a terminal named by mistake is refused at
    /// once instead of waited on. The caller closes it with ``close()``.
    /// - Throws: ``StoreError/cannotOpen(path:errno:)`` when open(2) fails, or what
    ///   ``init(descriptor:path:)`` throws (the descriptor is then closed).
    public static func open(_ path: String) throws(StoreError) -> OpenBundle {
        var raw = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if raw < 0 && errno == ENOTDIR { raw = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY) }
        guard raw >= 0 else { throw .cannotOpen(path: path, errno: errno) }
        let descriptor = FileDescriptor(rawValue: raw)
        do { return try OpenBundle(descriptor: descriptor, path: path) } catch {
            try? descriptor.close()
            throw error
        }
    }

    /// Closes ``descriptor``; only for a bundle made with ``open(_:)``.
    public func close() {
        try? descriptor.close()
    }
}
