import Foundation
import SystemPackage
import Testing
@testable import BackstopCore

/// A connected pair of Unix stream sockets (socketpair(2)), closed with ``close()``.
private struct SocketPair {
    let sender: Int32
    let receiver: Int32

    init() throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        sender = pair[0]
        receiver = pair[1]
    }

    func send(_ text: String, descriptors: [Int32] = []) throws -> Int {
        try Array(text.utf8).withUnsafeBytes { try DescriptorPassing.send(sender, $0, descriptors: descriptors) }
    }

    func receive(maximumDescriptors: Int) throws(DescriptorPassing.ReceiveError) -> (text: String, descriptors: [Int32]) {
        var buffer = [UInt8](repeating: 0, count: 256)
        let result = buffer.withUnsafeMutableBytes { bytes in
            Result { () throws(DescriptorPassing.ReceiveError) in
                try DescriptorPassing.receive(receiver, into: bytes, maximumDescriptors: maximumDescriptors)
            }
        }
        let received = try result.get()
        return (String(decoding: buffer[..<received.byteCount], as: UTF8.self), received.descriptors)
    }

    func close() {
        _ = Glibc.close(sender)
        _ = Glibc.close(receiver)
    }
}

@Suite("Descriptor passing (SCM_RIGHTS)", .serialized)
struct DescriptorPassingTests {
    @Test("descriptors sent with bytes arrive with them, close-on-exec, open on the same file")
    func roundTrip() throws {
        let pair = try SocketPair()
        defer { pair.close() }
        var pipe: [Int32] = [-1, -1]
        try #require(Glibc.pipe(&pipe) == 0)
        defer { pipe.forEach { _ = close($0) } }

        #expect(try pair.send("call\0", descriptors: [pipe[1]]) == 5)
        let (text, descriptors) = try pair.receive(maximumDescriptors: 4)
        #expect(text == "call\0")
        try #require(descriptors.count == 1)
        defer { descriptors.forEach { _ = close($0) } }
        #expect(fcntl(descriptors[0], F_GETFD) & FD_CLOEXEC != 0)
        #expect(write(descriptors[0], "x", 1) == 1)
        var byte: UInt8 = 0
        #expect(read(pipe[0], &byte, 1) == 1 && byte == UInt8(ascii: "x"))

        // Bytes sent without descriptors come without any; a reader finds nothing to read, then the end.
        #expect(try pair.send("next\0") == 5)
        let plain = try pair.receive(maximumDescriptors: 4)
        #expect(plain.text == "next\0" && plain.descriptors.isEmpty)
        _ = fcntl(pair.receiver, F_SETFL, fcntl(pair.receiver, F_GETFL) | O_NONBLOCK)
        #expect(throws: DescriptorPassing.ReceiveError.system(.resourceTemporarilyUnavailable)) { try pair.receive(maximumDescriptors: 4) }
        shutdown(pair.sender, Int32(SHUT_WR))
        #expect(try pair.receive(maximumDescriptors: 4).text.isEmpty)
    }

    @Test("more descriptors than there is room for are refused as truncated, and none of them stays open")
    func truncated() throws {
        let pair = try SocketPair()
        defer { pair.close() }
        var pipe: [Int32] = [-1, -1]
        try #require(Glibc.pipe(&pipe) == 0)
        defer { _ = close(pipe[0]) }
        #expect(try pair.send("call\0", descriptors: [pipe[1], pipe[1], pipe[1]]) == 5)
        close(pipe[1])
        #expect(throws: DescriptorPassing.ReceiveError.truncated) { try pair.receive(maximumDescriptors: 2) }
        // The pipe reads its end only once no copy of its write end is open anywhere.
        _ = fcntl(pipe[0], F_SETFL, fcntl(pipe[0], F_GETFL) | O_NONBLOCK)
        var byte: UInt8 = 0
        #expect(read(pipe[0], &byte, 1) == 0)
    }

    @Test("a send error is the errno of sendmsg, without SIGPIPE")
    func sendError() throws {
        let pair = try SocketPair()
        defer { _ = close(pair.sender) }
        close(pair.receiver)
        #expect(throws: Errno.brokenPipe) { try pair.send("call\0", descriptors: [0]) }
    }
}
