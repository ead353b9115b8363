@preconcurrency import Dispatch
import Foundation
import SystemPackage

/// One datagram of the sd_notify protocol (sd_notify(3)): newline-separated
/// `KEY=VALUE` assignments, with the sender's credentials from SCM_CREDENTIALS.
public struct NotifyMessage: Sendable, Equatable {
    /// The sending process, as the kernel reports it (not as the sender claims).
    public var senderPID: Int32
    /// The sending process's user ID, from SCM_CREDENTIALS.
    public var senderUID: UInt32
    /// The assignments, in order; a later duplicate wins in ``value(_:)``.
    public var assignments: [(String, String)]

    /// A message as received; tests build them directly.
    public init(senderPID: Int32, senderUID: UInt32, assignments: [(String, String)]) {
        self.senderPID = senderPID
        self.senderUID = senderUID
        self.assignments = assignments
    }

    /// The value of `key` (`READY`, `WATCHDOG`, `STATUS`, ...).
    public func value(_ key: String) -> String? {
        assignments.last { $0.0 == key }?.1
    }

    /// Parses a datagram's payload. Lines without `=` are ignored, as systemd does.
    public static func parse(_ payload: Data) -> [(String, String)] {
        String(decoding: payload, as: UTF8.self).split(separator: "\n").compactMap { line in
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { return nil }
            return (String(parts[0]), String(parts[1]))
        }
    }

    /// Same sender and the same assignments in order (tuples are not `Equatable`, so written out).
    public static func == (lhs: NotifyMessage, rhs: NotifyMessage) -> Bool {
        lhs.senderPID == rhs.senderPID && lhs.senderUID == rhs.senderUID
            && lhs.assignments.elementsEqual(rhs.assignments) { $0 == $1 }
    }
}

/// The receiving end of an agent's `NOTIFY_SOCKET`: an AF_UNIX datagram socket
/// with SO_PASSCRED, read by a dispatch source (no polling).
///
/// Who may speak for an agent is decided by who can reach its socket, never by looking the
/// sender up when the datagram is read: a helper that sent `READY=1` or `WATCHDOG=1` and
/// exited at once is gone by then, most of all while backstopd is stalled. backstopd makes
/// one socket per run in `<runtime_directory>/notify` (mode 0700, root's) and binds it alone
/// into that run's sandbox, where the rest of that directory is an empty tmpfs
/// (``BubblewrapSandbox/notifySocket``). So a datagram on it comes from a process of that run's
/// sandbox (or from root on the host), and what an earlier run sent stays on the earlier
/// run's socket, closed when the next run starts.
///
/// File descriptors passed along (FDSTORE=1) are closed at once: Backstop keeps none.
// @unchecked: every stored property is set once in init; DispatchSource's cancel is thread-safe.
public final class NotifySocket: @unchecked Sendable {
    /// The socket's path, handed to the agent as `NOTIFY_SOCKET`.
    public let path: String
    private let descriptor: Int32
    private let source: any DispatchSourceRead

    /// Largest datagram read; systemd accepts up to the socket buffer, agents send a few bytes.
    static let maximumDatagramBytes = 4096

    /// Binds a new socket at `path` (an old one there is replaced) and calls `handler`
    /// on `queue` for every datagram.
    /// - Throws: `Errno` from socket(2), bind(2) or setsockopt(2).
    public init(path: String, queue: DispatchQueue, handler: @escaping @Sendable (NotifyMessage) -> Void) throws {
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        do {
            var on: Int32 = 1
            guard setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
                throw Errno(rawValue: errno)
            }
            _ = unlink(path)
            try UnixSocketAddress.withAddress(path) { address, length in
                guard bind(fd, address, length) == 0 else { throw Errno(rawValue: errno) }
            }
        } catch {
            close(fd)
            throw error
        }
        descriptor = fd
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler {
            while let message = Self.receive(fd) { handler(message) }
        }
        source.setCancelHandler { close(fd) }
        self.source = source
        source.resume()
    }

    /// Stops reading, closes the socket and removes its path.
    public func invalidate() {
        source.cancel()
        _ = unlink(path)
    }

    /// One datagram, or nil when none is waiting. Datagrams without credentials are dropped.
    private static func receive(_ fd: Int32) -> NotifyMessage? {
        while true {
            var payload = [UInt8](repeating: 0, count: maximumDatagramBytes)
            var control = [UInt8](repeating: 0, count: 512)
            let received = payload.withUnsafeMutableBytes { payloadBytes in
                control.withUnsafeMutableBytes { controlBytes in
                    var vector = iovec(iov_base: payloadBytes.baseAddress, iov_len: payloadBytes.count)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var header = msghdr()
                        header.msg_iov = vectorPointer
                        header.msg_iovlen = 1
                        header.msg_control = controlBytes.baseAddress
                        header.msg_controllen = controlBytes.count
                        let count = recvmsg(fd, &header, Int32(MSG_CMSG_CLOEXEC) | Int32(MSG_DONTWAIT))
                        return (count, header.msg_controllen)
                    }
                }
            }
            guard received.0 >= 0 else {
                if errno == EINTR { continue }
                return nil
            }
            guard let credentials = Self.credentials(control: control, length: received.1) else { continue }
            return NotifyMessage(
                senderPID: credentials.pid, senderUID: credentials.uid,
                assignments: NotifyMessage.parse(Data(payload[..<received.0])))
        }
    }

    /// Walks the control messages (``ControlMessages``); returns SCM_CREDENTIALS and closes
    /// any SCM_RIGHTS descriptors.
    private static func credentials(control: [UInt8], length: Int) -> PeerCredentials? {
        var result: PeerCredentials?
        control.withUnsafeBytes { bytes in
            ControlMessages.forEach(in: bytes, length: length) { level, type, data in
                guard level == SOL_SOCKET else { return }
                if type == PeerCredentials.controlMessageType, data.count >= MemoryLayout<PeerCredentials>.size {
                    result = data.loadUnaligned(as: PeerCredentials.self)
                } else if type == Int32(SCM_RIGHTS) {
                    for descriptor in ControlMessages.descriptors(in: data) { close(descriptor) }
                }
            }
        }
        return result
    }
}

/// `struct ucred` of socket(7) and unix(7): what SO_PEERCRED and SCM_CREDENTIALS report.
/// Declared here because Glibc hides `ucred` behind `_GNU_SOURCE`; the layout is the kernel's.
public struct PeerCredentials: Sendable, Equatable {
    /// The peer's process ID.
    public var pid: Int32
    /// The peer's user ID.
    public var uid: UInt32
    /// The peer's group ID.
    public var gid: UInt32

    /// `SCM_CREDENTIALS` (linux/socket.h).
    static let controlMessageType: Int32 = 2
    /// `SO_PEERCRED` (asm-generic/socket.h).
    static let peerCredentialsOption: Int32 = 17

    /// The credentials of the process at the other end of a connected Unix socket (SO_PEERCRED).
    /// - Throws: `Errno` from getsockopt(2).
    public static func of(socket fd: Int32) throws -> PeerCredentials {
        var credentials = PeerCredentials(pid: 0, uid: UInt32.max, gid: UInt32.max)
        var length = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(fd, SOL_SOCKET, peerCredentialsOption, &credentials, &length) == 0 else {
            throw Errno(rawValue: errno)
        }
        return credentials
    }
}

/// `sockaddr_un` for a filesystem path.
enum UnixSocketAddress {
    /// Calls `body` with a `sockaddr_un` for `path`.
    /// - Throws: `Errno(rawValue: ENAMETOOLONG)` when the path does not fit `sun_path` (108 bytes), or what `body` throws.
    static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) throws -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw Errno(rawValue: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return try withUnsafePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
