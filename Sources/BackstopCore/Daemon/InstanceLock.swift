import Foundation
import SystemPackage

/// Makes sure one daemon at a time owns a directory (the state and the runtime
/// directory each get one): flock(2) on `<directory>/backstopd.lock`, held for the life
/// of the process (the kernel drops it when the process dies, however it dies). The
/// file holds the owner's pid.
public final class InstanceLock: Sendable {
    private let descriptor: FileDescriptor

    /// Another daemon holds the lock.
    public struct Busy: Error, CustomStringConvertible {
        /// The lock file, `<directory>/backstopd.lock`.
        public var path: String
        /// The pid written in the lock file, as text; empty when unreadable.
        public var ownerPID: String
        /// One sentence naming the other daemon's pid and the directory, for the operator.
        public var description: String {
            "another backstopd (pid \(ownerPID.isEmpty ? "unknown" : ownerPID)) is using \((path as NSString).deletingLastPathComponent); stop it first"
        }
    }

    /// Takes the lock of `directory`, creating the directory when needed.
    /// - Throws: ``Busy`` when another process holds it, `Errno` from open(2) or flock(2).
    public init(directory: String) throws {
        try DurableFile.makeDirectories(directory, mode: 0o755)
        let path = directory + "/backstopd.lock"
        let descriptor = try FileDescriptor.open(
            FilePath(path), .readWrite, options: [.create, .closeOnExec], permissions: [.ownerReadWrite, .groupRead, .otherRead])
        guard flock(descriptor.rawValue, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            let owner = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            try? descriptor.close()
            if code == EWOULDBLOCK { throw Busy(path: path, ownerPID: owner) }
            throw Errno(rawValue: code)
        }
        _ = ftruncate(descriptor.rawValue, 0)
        _ = try? descriptor.writeAll(toAbsoluteOffset: 0, Data("\(getpid())\n".utf8))
        self.descriptor = descriptor
    }

    deinit {
        try? descriptor.close()
    }
}
