import CLinux
import Foundation
import SystemPackage

/// A process's stderr passed on, unchanged and in order, to where it goes (the agent's journal
/// stream), through a pipe whose last ``keptBytes`` bytes are kept, so that Backstop can read
/// what the agent said before it failed (``SandboxObstacle/find(in:)``) without reading the journal.
///
/// A thread of its own waits on the pipe (poll(2)) and relays what comes until every writer
/// has closed it (the agent and anything it left running). ``settle()`` takes what is in the
/// pipe at that instant, so that the lines written just before an exit are in ``text``.
public final class OutputTail: @unchecked Sendable {
    // @unchecked: `open` and the descriptors are only touched with `lock` held, `kept` with `keptLock`.

    /// How much of the end of the output is kept, in bytes.
    public static let keptBytes = 4096

    /// Held while reading the pipe and passing it on, which blocks while the destination does
    /// (a stalled journald): never taken on the supervisor's actor.
    private let lock = NSLock()
    private let keptLock = NSLock()
    private var kept: [UInt8] = []
    private var open = false
    private var readEnd: Int32 = -1
    private var destination: Int32 = -1

    /// An empty tail; ``attach(relayingTo:)`` gives it a pipe.
    public init() {}

    /// Makes the pipe and starts relaying it to a copy of `destination` (the caller keeps its own descriptor).
    /// - Returns: the end the process writes to, for the spawn, which closes it in this process.
    /// - Throws: `Errno` of pipe2(2) or fcntl(2).
    func attach(relayingTo destination: Int32) throws(Errno) -> FileDescriptor {
        var ends: [Int32] = [0, 0]
        guard backstop_pipe_cloexec(&ends) == 0 else { throw Errno(rawValue: errno) }
        let copy = fcntl(destination, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else {
            let error = Errno(rawValue: errno)
            close(ends[0])
            close(ends[1])
            throw error
        }
        _ = fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK)
        lock.lock()
        readEnd = ends[0]
        self.destination = copy
        open = true
        lock.unlock()
        Thread { [self] in relay() }.start()
        return FileDescriptor(rawValue: ends[1])
    }

    /// What is in the pipe now is passed on and joins the tail. Blocks while the destination does.
    public func settle() {
        lock.lock()
        defer { lock.unlock() }
        if open { _ = drainLocked() }
    }

    /// The tail as text (invalid UTF-8 replaced); never blocks on the pipe.
    public var text: String {
        keptLock.lock()
        defer { keptLock.unlock() }
        return String(decoding: kept, as: UTF8.self)
    }

    private func relay() {
        while true {
            var descriptor = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            lock.lock()
            let ended = drainLocked()
            lock.unlock()
            if ended { break }
        }
        lock.lock()
        open = false
        close(readEnd)
        close(destination)
        lock.unlock()
    }

    /// Reads what the pipe holds, passes it on and keeps its end; true at end of file (or an error).
    private func drainLocked() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if count == 0 { return true }
            if count < 0 {
                if errno == EINTR { continue }
                return errno != EAGAIN
            }
            var written = 0
            while written < count {
                let step = buffer.withUnsafeBytes { write(destination, $0.baseAddress! + written, count - written) }
                if step < 0, errno == EINTR { continue }
                // A destination that fails (journald gone) loses the output, not the tail.
                guard step > 0 else { break }
                written += step
            }
            keptLock.lock()
            kept.append(contentsOf: buffer[0..<count])
            if kept.count > Self.keptBytes { kept.removeFirst(kept.count - Self.keptBytes) }
            keptLock.unlock()
        }
    }
}
