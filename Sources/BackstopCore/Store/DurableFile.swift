import CLinux
import Foundation
import SystemPackage

/// Crash-safe file operations: after a kill -9 or power cut at any instant, a
/// reader sees either the old or the new content, never a mix (rename(2) is
/// atomic; fsync(2) of the file and then of the directory makes it durable).
public enum DurableFile {
    /// Writes `data` to `path` through `path.tmp`: write, fsync, rename, fsync the directory.
    /// With `previous`, the file being replaced is first hard-linked there (link(2) to a
    /// temporary name, then rename(2)), so some complete generation exists at every instant.
    /// - Throws: `Errno` from open(2), write(2), fsync(2), link(2) or rename(2).
    public static func write(
        _ data: Data, to path: String, mode: FilePermissions = [.ownerReadWrite], keepingPreviousAt previous: String? = nil
    ) throws {
        let temporary = path + ".tmp"
        let descriptor = try FileDescriptor.open(
            FilePath(temporary), .writeOnly, options: [.create, .truncate, .closeOnExec], permissions: mode)
        try descriptor.closeAfter {
            _ = try descriptor.writeAll(data)
            try fsync(descriptor, of: temporary)
        }
        if let previous, access(path, F_OK) == 0 {
            let link = previous + ".tmp"
            _ = unlink(link)
            guard Glibc.link(path, link) == 0 else { throw Errno(rawValue: errno) }
            FaultInjection.step("link \(path) to \(link)")
            try rename(link, to: previous)
        }
        try rename(temporary, to: path)
        try syncDirectory(containing: path)
    }

    /// Replaces (or creates) the symlink at `path` so that it points to `target`,
    /// atomically: symlink(2) to `path.tmp`, then rename(2) over `path`, then fsync the directory.
    /// - Throws: `Errno` from symlink(2), rename(2) or fsync(2).
    public static func replaceSymlink(at path: String, pointingTo target: String) throws {
        let temporary = path + ".tmp"
        _ = unlink(temporary)
        guard symlink(target, temporary) == 0 else { throw Errno(rawValue: errno) }
        FaultInjection.step("symlink \(temporary) -> \(target)")
        try rename(temporary, to: path)
        try syncDirectory(containing: path)
    }

    /// rename(2), retried on EINTR.
    /// - Throws: `Errno`.
    public static func rename(_ from: String, to: String) throws {
        guard Glibc.rename(from, to) == 0 else { throw Errno(rawValue: errno) }
        FaultInjection.step("rename \(from) to \(to)")
    }

    /// Renames `from` to `to` unless `to` exists (renameat2(2), `RENAME_NOREPLACE`).
    /// - Throws: `Errno`; `EEXIST` when `to` exists.
    public static func renameWithoutReplacing(_ from: String, to: String) throws {
        guard backstop_rename_noreplace(from, to) == 0 else { throw Errno(rawValue: errno) }
        FaultInjection.step("rename \(from) to \(to)")
    }

    /// fsync(2) of the directory that holds `path`, so that a rename in it is durable.
    /// - Throws: `Errno` from open(2) or fsync(2).
    public static func syncDirectory(containing path: String) throws {
        try syncDirectory(at: (path as NSString).deletingLastPathComponent)
    }

    /// fsync(2) of the directory `path`.
    /// - Throws: `Errno` from open(2) or fsync(2).
    public static func syncDirectory(at path: String) throws {
        let directory = try FileDescriptor.open(FilePath(path.isEmpty ? "." : path), .readOnly, options: [.directory, .closeOnExec])
        try directory.closeAfter { guard Glibc.fsync(directory.rawValue) == 0 else { throw Errno(rawValue: errno) } }
        FaultInjection.step("fsync directory \(path)")
    }

    /// fsync(2) of `descriptor`, open on `path`.
    /// - Throws: `Errno`.
    public static func fsync(_ descriptor: FileDescriptor, of path: String) throws {
        guard Glibc.fsync(descriptor.rawValue) == 0 else { throw Errno(rawValue: errno) }
        FaultInjection.step("fsync \(path)")
    }

    /// Whether `path` exists: false only when stat(2) says it does not (`ENOENT`,
    /// `ENOTDIR`), so that a file the caller may not see is not taken for a missing one.
    /// - Throws: `Errno` of stat(2) otherwise (`EACCES`, `EIO`).
    public static func exists(_ path: String) throws(Errno) -> Bool {
        var info = stat()
        if stat(path, &info) == 0 { return true }
        if errno == ENOENT || errno == ENOTDIR { return false }
        throw Errno(rawValue: errno)
    }

    /// mkdir -p with `mode` for the directories it creates.
    /// - Throws: the error of FileManager.
    public static func makeDirectories(_ path: String, mode: Int = 0o755) throws {
        try FileManager.default.createDirectory(
            atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: mode])
    }
}
