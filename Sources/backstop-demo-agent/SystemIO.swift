import Glibc

/// Line output straight to the file descriptors. Supervisors read our output
/// through pipes, where stdio would block-buffer it and lose the tail on a
/// crash; one write(2) per line is unbuffered and keeps lines whole.
enum Console {
    /// Writes `backstop-demo-agent: <message>` to stdout.
    static func out(_ message: String) {
        writeLine(message, to: FileDescriptor(STDOUT_FILENO))
    }

    /// Writes `backstop-demo-agent: <message>` to stderr.
    static func error(_ message: String) {
        writeLine(message, to: FileDescriptor(STDERR_FILENO))
    }

    /// Writes one prefixed line with a single write(2).
    private static func writeLine(_ message: String, to file: FileDescriptor) {
        // Best effort: there is nowhere left to report a failing console.
        try? file.writeAll("backstop-demo-agent: \(message)\n")
    }
}

/// File-system helpers built directly on libc, so content errors can name
/// the exact errno ("Permission denied", "Not a directory") behind them.
enum Files {
    /// The whole content of `path`, which must be UTF-8 text.
    static func readText(_ path: String) throws(SystemCallError) -> String {
        let file = try FileDescriptor.open(path, flags: O_RDONLY)
        defer { file.close() }
        guard let text = String(validating: try file.readAll(), as: UTF8.self) else {
            throw SystemCallError(call: "read \(path)", reason: "not valid UTF-8")
        }
        return text
    }

    /// Names of the entries in `directory`, excluding `.` and `..`.
    static func list(_ directory: String) throws(SystemCallError) -> [String] {
        guard let stream = opendir(directory) else { throw SystemCallError(call: "opendir \(directory)") }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            // d_name is imported as a fixed-size tuple holding a C string.
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                String(cString: bytes.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != ".", name != ".." {
                names.append(name)
            }
        }
        return names
    }

    /// The last path component of `path` after resolving `.`, `..` and
    /// symlinks, so `--content .` is named after the real directory.
    static func baseName(_ path: String) -> String {
        let resolved = realpath(path, nil).map { pointer in
            defer { free(pointer) }
            return String(cString: pointer)
        }
        return (resolved ?? path).split(separator: "/").last.map(String.init) ?? "/"
    }
}

/// A bare file descriptor with the few operations the agent needs.
struct FileDescriptor {
    /// The underlying descriptor number.
    let raw: Int32

    /// Wraps an already-open descriptor.
    init(_ raw: Int32) {
        self.raw = raw
    }

    /// Opens `path` with `flags`, creating files as mode 0644.
    static func open(_ path: String, flags: Int32) throws(SystemCallError) -> FileDescriptor {
        let raw = Glibc.open(path, flags | O_CLOEXEC, 0o644)
        guard raw >= 0 else { throw SystemCallError(call: "open \(path)") }
        return FileDescriptor(raw)
    }

    /// Writes all of `text`, retrying short writes and EINTR.
    func writeAll(_ text: String) throws(SystemCallError) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { Glibc.write(raw, $0.baseAddress, $0.count) }
            if written < 0 {
                guard errno == EINTR else { throw SystemCallError(call: "write") }
                continue
            }
            bytes = bytes.dropFirst(written)
        }
    }

    /// Reads until end of file, retrying EINTR.
    func readAll() throws(SystemCallError) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(raw, $0.baseAddress, $0.count) }
            if count == 0 { return bytes }
            if count < 0 {
                guard errno == EINTR else { throw SystemCallError(call: "read") }
                continue
            }
            bytes += chunk[..<count]
        }
    }

    /// Closes the descriptor; errors are irrelevant for our write-then-close use.
    func close() {
        _ = Glibc.close(raw)
    }
}

/// A failed system call and why it failed.
struct SystemCallError: Error, CustomStringConvertible {
    /// The call that failed, with its subject, e.g. `open /path`.
    let call: String
    /// Human-readable cause, normally strerror(errno).
    let reason: String

    /// Describes the current `errno` for `call`.
    init(call: String) {
        self.init(call: call, reason: String(cString: strerror(errno)))
    }

    /// Describes a failure with an explicit `reason`.
    init(call: String, reason: String) {
        self.call = call
        self.reason = reason
    }

    var description: String {
        "\(call): \(reason)"
    }
}

/// The current CLOCK_MONOTONIC time in nanoseconds, the clock benchmarks use
/// to compare our crash moment with the supervisor's detection moment.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
