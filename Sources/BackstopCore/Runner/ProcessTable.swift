import Foundation

/// Reads facts about processes from /proc (proc(5)).
public enum ProcessTable {
    /// One line of `/proc/PID/stat`, the fields Backstop uses.
    struct Entry {
        var pid: Int32
        /// `S`, `R`, `Z`, ...: one letter, field 3.
        var state: Character
        var parent: Int32
        var session: Int32
        /// When the process started, in clock ticks after boot (field 22): with the pid, it names one process for good.
        var startTime: UInt64
    }

    /// The processes (other than this one) whose environment holds `NAME=value` exactly,
    /// from `/proc/PID/environ`. Needs root to read other users' processes.
    public static func processes(withEnvironment name: String, value: String) -> [Int32] {
        processes(withAnyOf: [name], value: value)
    }

    /// The processes (other than this one) whose environment holds `NAME=value` for any of
    /// `names`, in one pass over /proc.
    public static func processes(withAnyOf names: [String], value: String) -> [Int32] {
        let own = getpid()
        return pids().filter { pid in pid != own && names.contains { hasEnvironment(pid, name: $0, value: value) } }
    }

    /// The live processes an agent whose leader `leader` has just been reaped left behind:
    /// those of its session (the leader's pid is the session id, setsid(2)), the
    /// children this process adopted as subreaper that carry the agent's `NAME=value`
    /// mark in their environment, and every descendant of either.
    /// - Parameters:
    ///   - isStartedHere: whether a pid is a child this process started itself (not adopted).
    ///   - unmarkedAdopted: also count adopted children with no Backstop mark at all (they
    ///     cleared their environment); right when only this agent can have left them.
    public static func survivors(
        ofSession leader: Int32, environment name: String, value: String, isStartedHere: (Int32) -> Bool,
        unmarkedAdopted: Bool = false
    ) -> [Int32] {
        let own = getpid()
        let live = entries().filter { $0.state != "Z" && $0.pid != own }
        var found = Set(live.filter { entry in
            if entry.session == leader { return true }
            guard entry.parent == own, !isStartedHere(entry.pid) else { return false }
            if hasEnvironment(entry.pid, name: name, value: value) { return true }
            return unmarkedAdopted && !hasMark(entry.pid)
        }.map(\.pid))
        var grew = true
        while grew {
            let children = live.filter { found.contains($0.parent) && !found.contains($0.pid) }.map(\.pid)
            grew = !children.isEmpty
            found.formUnion(children)
        }
        return found.sorted()
    }

    /// SIGKILLs `found`, then what `find` still finds (one may have forked between the scan
    /// and the kill), again until nothing is left, at most 5 rounds.
    public static func kill(_ found: [Int32], thenWhat find: () -> [Int32]) {
        var found = found
        for _ in 0..<5 where !found.isEmpty {
            found.forEach { _ = Glibc.kill($0, SIGKILL) }
            found = find()
        }
    }

    /// The children this process adopted as subreaper and did not start, still alive.
    /// - Parameter isStartedHere: whether a pid is a child this process started itself.
    public static func adoptedChildren(isStartedHere: (Int32) -> Bool) -> [Int32] {
        let own = getpid()
        return entries().filter { $0.parent == own && $0.state != "Z" && !isStartedHere($0.pid) }.map(\.pid)
    }

    /// Whether `pid` names a process that has not ended (a zombie has ended).
    public static func isAlive(_ pid: Int32) -> Bool {
        guard let entry = entry(pid) else { return false }
        return entry.state != "Z" && entry.state != "X"
    }

    static func pids() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
    }

    static func entries() -> [Entry] {
        pids().compactMap(entry)
    }

    /// `/proc/PID/stat`: the command name in parentheses may hold spaces and parentheses,
    /// so the fields are counted from the last `)`.
    static func entry(_ pid: Int32) -> Entry? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat"),
            let text = String(data: data, encoding: .utf8), let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // state ppid pgrp session ... starttime (field 22, the 20th after the name)
        guard fields.count >= 20, let state = fields[0].first, let parent = Int32(fields[1]), let session = Int32(fields[3]),
            let startTime = UInt64(fields[19])
        else { return nil }
        return Entry(pid: pid, state: state, parent: parent, session: session, startTime: startTime)
    }

    /// Whether the process carries any Backstop mark (an agent's or a probe's).
    static func hasMark(_ pid: Int32) -> Bool {
        guard let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return true }
        let prefixes = [LaunchRequest.storeVariable, LaunchRequest.probeStoreVariable, LaunchRequest.preflightStoreVariable]
            .map { Array("\($0)=".utf8) }
        return environ.split(separator: 0).contains { entry in prefixes.contains { entry.starts(with: $0) } }
    }

    static func hasEnvironment(_ pid: Int32, name: String, value: String) -> Bool {
        guard let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
        let wanted = Array("\(name)=\(value)".utf8)
        return environ.split(separator: 0).contains { $0.elementsEqual(wanted) }
    }
}

/// Reads the kernel log (`/dev/kmsg`, the kernel's dev-kmsg ABI) for what only the
/// kernel knows about a process's end.
public enum KernelLog {
    /// Whose OOM killer killed a process (the prefix of its kernel log record).
    public enum OOMKiller: Sendable, Equatable {
        /// `Out of memory: Killed process ...`: the machine ran out.
        case machine
        /// `Memory cgroup out of memory: Killed process ...`: a cgroup reached its memory limit.
        case memoryCgroup
    }

    /// Whether the kernel's OOM killer killed `pid` after `sinceMonotonicMicroseconds`
    /// (CLOCK_MONOTONIC; kmsg stamps come from the kernel's local clock, which may lag
    /// it slightly, so 5 s of slack is allowed), and whose: the record `Killed process PID (name)`
    /// that the OOM killer writes for the whole machine and for a memory cgroup alike.
    /// Nil when the log cannot be read (it needs CAP_SYSLOG) or holds no such record.
    public static func oomKill(of pid: Int32, sinceMonotonicMicroseconds: UInt64) -> OOMKiller? {
        let descriptor = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        let needle = "Killed process \(pid) ("
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let count = read(descriptor, &buffer, buffer.count)
            if count < 0 {
                // EPIPE: the record was overwritten while reading; the next read goes on.
                if errno == EPIPE || errno == EINTR { continue }
                return nil  // EAGAIN: the end of the log.
            }
            guard count > 0 else { return nil }
            // "PRIORITY,SEQUENCE,TIMESTAMP_USEC,FLAGS;MESSAGE"
            let record = String(decoding: buffer[0..<count], as: UTF8.self)
            guard let semicolon = record.firstIndex(of: ";"), record.contains(needle) else { continue }
            let prefix = record[..<semicolon].split(separator: ",")
            if prefix.count >= 3, let stamp = UInt64(prefix[2]), stamp + 5_000_000 >= sinceMonotonicMicroseconds {
                return record[semicolon...].contains("Memory cgroup out of memory") ? .memoryCgroup : .machine
            }
        }
    }

    /// CLOCK_MONOTONIC now, in microseconds: the clock of kmsg timestamps.
    public static func monotonicMicroseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000 + UInt64(spec.tv_nsec) / 1000
    }
}

/// The processes backstopd started for an agent and that still run, one file per run kind
/// in `<runtime_directory>/runs/` (`<agent>` for the agent, `<agent>.preflight` for a
/// preflight): `<pid> <start time>` (proc(5) stat field 22). A backstopd that was killed
/// is followed by one that finds them there even when they cleared their environment, and
/// with it Backstop's mark; the start time keeps a reused pid from being taken for them.
/// The runtime directory goes with the boot, as the processes do.
public struct RunRecord: Sendable {
    /// The record's file.
    public let path: String

    /// The record of `agent`'s runs of `kind` (nil: the agent itself, else e.g. `preflight`).
    public init(runtimeDirectory: String, agent: String, kind: String? = nil) {
        path = runtimeDirectory + "/runs/" + agent + (kind.map { "." + $0 } ?? "")
    }

    /// Records `pid` as the running process (best effort: the environment mark still finds it).
    public func started(_ pid: Int32) {
        guard let entry = ProcessTable.entry(pid) else { return }
        try? DurableFile.makeDirectories((path as NSString).deletingLastPathComponent, mode: 0o700)
        try? "\(pid) \(entry.startTime)\n".write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// The run is over.
    public func ended() {
        _ = unlink(path)
    }

    /// The recorded process, when it is still the one that was recorded; the record goes either way.
    public func survivor() -> Int32? {
        defer { ended() }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let words = text.split(whereSeparator: \.isWhitespace)
        guard words.count == 2, let pid = Int32(words[0]), let startTime = UInt64(words[1]), pid > 1,
            let entry = ProcessTable.entry(pid), entry.startTime == startTime, entry.state != "Z"
        else { return nil }
        return pid
    }
}
