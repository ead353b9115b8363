import Foundation
import SystemPackage

/// File descriptors sent along with the bytes of a Unix stream socket, as `SCM_RIGHTS`
/// ancillary data (unix(7), cmsg(3)): how `backstopctl stage` hands backstopd the bundle
/// it opened, so that the daemon never resolves a caller's path in its own mount namespace.
///
/// On a stream socket the descriptors travel with the bytes of the sendmsg(2) that sent
/// them, and a recvmsg(2) that takes them ends with those bytes (it never reads past the
/// descriptors' segment), so the receiver knows which message they came with.
public enum DescriptorPassing {
    /// What one ``receive(_:into:maximumDescriptors:)`` read.
    public struct Received: Equatable {
        /// The data bytes read into the buffer; 0 at the end of the stream.
        public var byteCount: Int
        /// The descriptors that came with them, close-on-exec; the caller owns and closes them.
        public var descriptors: [Int32]
    }

    /// Why ``receive(_:into:maximumDescriptors:)`` read nothing usable.
    public enum ReceiveError: Error, Equatable {
        /// recvmsg(2) failed with this errno (`EAGAIN` on a non-blocking socket with nothing to read).
        case system(Errno)
        /// The control data was truncated (`MSG_CTRUNC`): more descriptors came than there was
        /// room for, or the receiver may hold no more (`RLIMIT_NOFILE`). Those that arrived are closed.
        case truncated
    }

    /// Sends the start of `bytes` with `descriptors` attached as one `SCM_RIGHTS` control
    /// message (none attached when empty), with `MSG_NOSIGNAL`: sendmsg(2), unix(7).
    /// The descriptors go with the first segment; send whatever is left without them.
    /// - Returns: the number of bytes sent, which may be fewer than `bytes.count`.
    /// - Throws: `Errno` from sendmsg(2).
    public static func send(_ socket: Int32, _ bytes: UnsafeRawBufferPointer, descriptors: [Int32]) throws(Errno) -> Int {
        let dataLength = descriptors.count * MemoryLayout<Int32>.size
        let controlLength = descriptors.isEmpty ? 0 : ControlMessages.space(dataLength)
        let sent = withControlBuffer(controlLength) { control -> Result<Int, Errno> in
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
            return withUnsafeMutablePointer(to: &vector) { vector -> Result<Int, Errno> in
                var message = msghdr()
                message.msg_iov = vector
                message.msg_iovlen = 1
                if !descriptors.isEmpty {
                    message.msg_control = control.baseAddress
                    message.msg_controllen = control.count
                    var header = cmsghdr()
                    header.cmsg_level = SOL_SOCKET
                    header.cmsg_type = Int32(SCM_RIGHTS)
                    header.cmsg_len = ControlMessages.length(dataLength)
                    control.storeBytes(of: header, as: cmsghdr.self)
                    descriptors.withUnsafeBytes {
                        (control.baseAddress! + ControlMessages.headerSpace).copyMemory(from: $0.baseAddress!, byteCount: dataLength)
                    }
                }
                let sent = sendmsg(socket, &message, Int32(MSG_NOSIGNAL))
                return sent >= 0 ? .success(sent) : .failure(Errno(rawValue: errno))
            }
        }
        return try sent.get()
    }

    /// Reads into `buffer` with room for up to `maximumDescriptors` passed descriptors:
    /// recvmsg(2) with `MSG_CMSG_CLOEXEC`, so no descriptor leaks into a child spawned meanwhile.
    /// - Throws: ``ReceiveError``: the errno of recvmsg(2), or ``ReceiveError/truncated``
    ///   (`MSG_CTRUNC`), after which the stream is out of step and the caller drops it.
    public static func receive(
        _ socket: Int32, into buffer: UnsafeMutableRawBufferPointer, maximumDescriptors: Int
    ) throws(ReceiveError) -> Received {
        let controlLength = ControlMessages.space(maximumDescriptors * MemoryLayout<Int32>.size)
        let result = withControlBuffer(controlLength) { control -> Result<Received, ReceiveError> in
            var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
            return withUnsafeMutablePointer(to: &vector) { vector -> Result<Received, ReceiveError> in
                var message = msghdr()
                message.msg_iov = vector
                message.msg_iovlen = 1
                message.msg_control = control.baseAddress
                message.msg_controllen = control.count
                let count = recvmsg(socket, &message, Int32(MSG_CMSG_CLOEXEC))
                guard count >= 0 else { return .failure(.system(Errno(rawValue: errno))) }
                var descriptors: [Int32] = []
                ControlMessages.forEach(in: UnsafeRawBufferPointer(control), length: message.msg_controllen) { level, type, data in
                    guard level == SOL_SOCKET, type == Int32(SCM_RIGHTS) else { return }
                    descriptors += ControlMessages.descriptors(in: data)
                }
                guard message.msg_flags & Int32(MSG_CTRUNC) == 0 else {
                    for descriptor in descriptors { close(descriptor) }
                    return .failure(.truncated)
                }
                return .success(Received(byteCount: count, descriptors: descriptors))
            }
        }
        return try result.get()
    }

    /// A zeroed buffer aligned for `cmsghdr`, alive only inside `body`.
    private static func withControlBuffer<R>(_ length: Int, _ body: (UnsafeMutableRawBufferPointer) -> R) -> R {
        withUnsafeTemporaryAllocation(byteCount: max(length, 1), alignment: MemoryLayout<cmsghdr>.alignment) { control in
            control.initializeMemory(as: UInt8.self, repeating: 0)
            return body(UnsafeMutableRawBufferPointer(rebasing: control[..<length]))
        }
    }
}

/// Ancillary data as cmsg(3) lays it out on Linux: each control message is a `cmsghdr`
/// followed by its data at the next `size_t` boundary, and the next message starts at the
/// boundary after its end (CMSG_ALIGN, CMSG_LEN, CMSG_SPACE, CMSG_DATA, CMSG_NXTHDR are
/// macros, which Swift cannot import).
enum ControlMessages {
    /// CMSG_ALIGN: rounded up to a multiple of `size_t`.
    static func aligned(_ length: Int) -> Int {
        (length + MemoryLayout<Int>.size - 1) & ~(MemoryLayout<Int>.size - 1)
    }

    /// Where a message's data starts after its header (CMSG_DATA's offset).
    static var headerSpace: Int { aligned(MemoryLayout<cmsghdr>.size) }

    /// CMSG_LEN: the `cmsg_len` of a message of `dataLength` bytes.
    static func length(_ dataLength: Int) -> Int { headerSpace + dataLength }

    /// CMSG_SPACE: the control buffer a message of `dataLength` bytes takes.
    static func space(_ dataLength: Int) -> Int { headerSpace + aligned(dataLength) }

    /// Calls `body` with the level, type and data of each whole message in the first
    /// `length` bytes of `control` (the `msg_controllen` recvmsg(2) left).
    static func forEach(in control: UnsafeRawBufferPointer, length: Int, _ body: (Int32, Int32, UnsafeRawBufferPointer) -> Void) {
        var offset = 0
        while offset + MemoryLayout<cmsghdr>.size <= min(length, control.count) {
            let header = control.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
            let total = Int(header.cmsg_len)
            guard total >= headerSpace, offset + total <= min(length, control.count) else { return }
            body(header.cmsg_level, header.cmsg_type, UnsafeRawBufferPointer(rebasing: control[(offset + headerSpace)..<(offset + total)]))
            offset += aligned(total)
        }
    }

    /// The descriptors an `SCM_RIGHTS` message carries.
    static func descriptors(in data: UnsafeRawBufferPointer) -> [Int32] {
        (0..<(data.count / MemoryLayout<Int32>.size)).map { data.loadUnaligned(fromByteOffset: $0 * MemoryLayout<Int32>.size, as: Int32.self) }
    }
}
