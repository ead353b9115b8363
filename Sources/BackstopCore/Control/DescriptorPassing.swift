import CLinux
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
        let controlLength = descriptors.isEmpty ? 0 : backstop_cmsg_space(dataLength)
        let sent = withControlBuffer(controlLength) { control -> Result<Int, Errno> in
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
            return withUnsafeMutablePointer(to: &vector) { vector -> Result<Int, Errno> in
                var message = msghdr()
                message.msg_iov = vector
                message.msg_iovlen = 1
                if !descriptors.isEmpty {
                    message.msg_control = control.baseAddress
                    message.msg_controllen = control.count
                    let header = backstop_cmsg_firsthdr(&message)!
                    header.pointee.cmsg_level = SOL_SOCKET
                    header.pointee.cmsg_type = Int32(SCM_RIGHTS)
                    header.pointee.cmsg_len = backstop_cmsg_len(dataLength)
                    descriptors.withUnsafeBytes { UnsafeMutableRawPointer(backstop_cmsg_data(header)!).copyMemory(from: $0.baseAddress!, byteCount: dataLength) }
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
        let controlLength = backstop_cmsg_space(maximumDescriptors * MemoryLayout<Int32>.size)
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
                var next = backstop_cmsg_firsthdr(&message)
                while let header = next {
                    if header.pointee.cmsg_level == SOL_SOCKET, header.pointee.cmsg_type == Int32(SCM_RIGHTS) {
                        let data = UnsafeRawPointer(backstop_cmsg_data(header)!)
                        let received = (header.pointee.cmsg_len - backstop_cmsg_len(0)) / MemoryLayout<Int32>.size
                        for index in 0..<received {
                            descriptors.append(data.loadUnaligned(fromByteOffset: index * MemoryLayout<Int32>.size, as: Int32.self))
                        }
                    }
                    next = backstop_cmsg_nxthdr(&message, header)
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
