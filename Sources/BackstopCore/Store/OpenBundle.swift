import CLinux
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

    /// Checks, with fcntl(2), fstatfs(2) and fstat(2), that an open descriptor is open for
    /// reading on a directory or a regular file outside the kernel's pseudo file systems;
    /// does not take it over.
    /// - Parameter path: the caller's path of it, named in errors.
    /// - Throws: ``StoreError/unsupportedBundle(path:kind:)`` for anything else (`O_PATH` or
    ///   write-only, /proc or /sys, a FIFO, a device, a socket), ``StoreError/io(path:operation:errno:)``
    ///   when a call fails.
    public init(descriptor: FileDescriptor, path: String) throws(StoreError) {
        // Opened for reading: an O_PATH or write-only descriptor proves no right to read.
        let flags = fcntl(descriptor.rawValue, F_GETFL)
        guard flags >= 0 else { throw .io(path: path, operation: "fcntl", errno: errno) }
        guard flags & Self.pathOnlyFlag == 0, flags & O_ACCMODE != O_WRONLY else {
            throw .unsupportedBundle(path: path, kind: "a descriptor not opened for reading")
        }
        // The kernel's pseudo file systems: their files can block a reader (/proc/kmsg) or never end.
        let fileSystem = backstop_file_system_type(descriptor.rawValue)
        guard fileSystem >= 0 else { throw .io(path: path, operation: "fstatfs", errno: errno) }
        if Self.pseudoFileSystems.contains(UInt64(fileSystem)) {
            throw .unsupportedBundle(path: path, kind: "on a kernel pseudo file system (/proc, /sys)")
        }
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

    /// open(2)'s `O_PATH` (010000000 on Linux), which Glibc's module does not export.
    static let pathOnlyFlag: Int32 = 0o10000000

    /// statfs(2) `f_type` of procfs, sysfs, debugfs, tracefs, securityfs, cgroup, cgroup2
    /// and bpf (linux/magic.h).
    static let pseudoFileSystems: Set<UInt64> = [0x9fa0, 0x6265_6572, 0x6462_6720, 0x7472_6163, 0x7363_6673, 0x0027_e0eb, 0x6367_7270, 0xcafe_4a11]

    /// The same directory or file on an open file description of its own (the passed one's
    /// offset is shared with its sender, who may move it while the store reads): a directory
    /// reopened as `.` below it (openat(2)), a file through `/proc/self/fd` (proc(5)), both
    /// read-only. The caller closes it with ``close()``.
    /// - Throws: ``StoreError/io(path:operation:errno:)`` when it cannot be reopened.
    public func reopened() throws(StoreError) -> OpenBundle {
        let raw = kind == .directory
            ? openat(descriptor.rawValue, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            : Glibc.open("/proc/self/fd/\(descriptor.rawValue)", O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard raw >= 0 else { throw .io(path: path, operation: "reopen", errno: errno) }
        let copy = FileDescriptor(rawValue: raw)
        do { return try OpenBundle(descriptor: copy, path: path) } catch {
            try? copy.close()
            throw error
        }
    }

    /// Closes ``descriptor``; only for a bundle made with ``open(_:)`` or ``reopened()``.
    public func close() {
        try? descriptor.close()
    }
}
