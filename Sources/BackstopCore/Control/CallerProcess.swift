import CLinux
import Foundation

/// What backstopd reads of a control client's process when it accepts the connection, to
/// tell whether the process belongs to a supervised agent (``Supervisor/agent(calling:)``):
/// the systemd unit its cgroup is in, its session and its ancestors (proc(5)).
///
/// The process is the one that connected (SO_PEERCRED's pid). It is read through a pidfd of
/// that process (SO_PEERPIDFD, Linux 6.5 and later), and the reading counts only when the
/// pidfd says the process is still alive after it: a live process keeps its pid, so what was
/// read is its own, never that of a process that got its pid afterwards. A process that is
/// gone by then cannot be told apart and is refused (``Identification/unidentified(_:)``).
/// On a kernel without SO_PEERPIDFD the pidfd is opened from the pid (pidfd_open(2)) at
/// accept: a client that connects and exits before the accept, its pid taken over by
/// another process at once, is then judged by that process (a race of a few microseconds,
/// against a pid counter that must wrap around in between).
public struct CallerProcess: Sendable, Equatable {
    /// Its pid in backstopd's PID namespace.
    public var pid: Int32
    /// The systemd unit whose cgroup holds it (`clamav-daemon.service`, `backstop-demo-4242.scope`):
    /// the first component of its cgroup path that is not a slice; nil outside systemd's units.
    public var unit: String?
    /// Its session ID (the session leader's pid; /proc/PID/stat, field 6).
    public var session: Int32
    /// Its parent, the parent's parent, and so on up to (not including) PID 1; at most 64.
    public var ancestors: [Int32]

    /// What could be read of a caller: the process, or why it cannot be told who it is.
    public enum Identification: Sendable, Equatable {
        case identified(CallerProcess)
        /// The reason, e.g. "it exited before its connection was accepted".
        case unidentified(String)
    }

    /// `SO_PEERPIDFD` (asm-generic/socket.h, Linux 6.5).
    static let peerPIDDescriptorOption: Int32 = 77

    /// Identifies the process at the other end of connected Unix socket `socket`, whose
    /// SO_PEERCRED pid is `pid` (0 when it is outside backstopd's PID namespace).
    public static func identify(socket: Int32, pid: Int32) -> Identification {
        guard pid > 0 else { return .unidentified("it is outside backstopd's PID namespace, so its process cannot be read") }
        var descriptor: Int32 = -1
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(socket, SOL_SOCKET, peerPIDDescriptorOption, &descriptor, &length) != 0 {
            // ENOPROTOOPT before Linux 6.5; ESRCH when the connecting process is gone.
            guard errno == ENOPROTOOPT || errno == EINVAL else { return .unidentified("it exited before its connection was accepted") }
            descriptor = backstop_pidfd_open(pid)
            guard descriptor >= 0 else { return .unidentified("it exited before its connection was accepted") }
        }
        defer { close(descriptor) }
        guard let caller = read(pid: pid) else { return .unidentified("its /proc entry could not be read") }
        // A pidfd turns readable once its process has exited (pidfd_open(2)).
        var exited = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        guard poll(&exited, 1, 0) == 0 else { return .unidentified("it exited before its connection was accepted") }
        return .identified(caller)
    }

    /// Reads process `pid` from /proc; nil when it is gone.
    static func read(pid: Int32) -> CallerProcess? {
        guard let cgroup = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8),
              let stat = Self.stat(pid) else { return nil }
        var ancestors: [Int32] = []
        var parent = stat.parent
        while parent > 1, ancestors.count < 64, !ancestors.contains(parent) {
            ancestors.append(parent)
            guard let next = Self.stat(parent) else { break }
            parent = next.parent
        }
        return CallerProcess(pid: pid, unit: unit(cgroupFile: cgroup), session: stat.session, ancestors: ancestors)
    }

    /// The parent and the session of `pid` from /proc/PID/stat, read after the command
    /// name's closing parenthesis (the name itself may hold spaces and parentheses).
    private static func stat(_ pid: Int32) -> (parent: Int32, session: Int32)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // state ppid pgrp session ...
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 3, let parent = Int32(fields[1]), let session = Int32(fields[3]) else { return nil }
        return (parent, session)
    }

    /// The unit of a /proc/PID/cgroup text (cgroups(7)): from the unified hierarchy's path
    /// (`0::PATH`), or from systemd's own `name=systemd` hierarchy where the unified one
    /// tracks nothing (a hybrid or legacy layout); the first component of the path that is
    /// not a slice, when it names a unit that holds processes.
    static func unit(cgroupFile text: String) -> String? {
        let lines = text.split(separator: "\n")
        func path(_ prefix: String) -> Substring? {
            lines.first { $0.hasPrefix(prefix) }.map { $0.dropFirst(prefix.count) }
        }
        let unified = path("0::").flatMap { $0 == "/" ? nil : $0 }
        guard let path = unified ?? lines.lazy.compactMap({ line -> Substring? in
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            return fields.count == 3 && fields[1] == "name=systemd" ? fields[2] : nil
        }).first else { return nil }
        guard let unit = path.split(separator: "/").first(where: { !$0.hasSuffix(".slice") }) else { return nil }
        let types = [".service", ".scope", ".socket", ".mount", ".swap"]
        return types.contains { unit.hasSuffix($0) && unit.count > $0.count } ? String(unit) : nil
    }

    /// backstopd's own process, read once: its unit tells processes it started (an agent not
    /// yet moved to its scope, a probe) from others when it runs as a service.
    static let own: CallerProcess? = read(pid: getpid())
}

extension Supervisor {
    /// The agent that `caller` belongs to, or nil: a process in the agent's unit
    /// (`runner = "systemd"`, `engine = "systemd"`) or in a transient scope backstopd made for
    /// a run (`backstop-<agent>-<pid>.scope`), in the session of an agent's run or below one
    /// of its processes (an agent's main process, probe, or what a daemonized run left), or
    /// (with backstopd a service) a process of backstopd's own service other than backstopd:
    /// one it started that is not in its scope yet. The cgroup holds wherever systemd runs
    /// the machine: a process cannot leave it without write access to the cgroup file
    /// system, which both engines' sandboxes take away. Session and ancestry also serve
    /// without systemd, where a process that starts a session of its own and is left
    /// behind by its parent is lost to them.
    /// - Returns: why the process is an agent's ("it belongs to agent demo (unit demo-agent.service)"), or nil.
    func agent(calling caller: CallerProcess) -> String? {
        if let unit = caller.unit {
            if let slot = slots.values.first(where: { $0.configuration.watchedUnit == unit }) {
                return "it belongs to agent \(slot.configuration.name) (unit \(unit))"
            }
            if let name = Self.scopeAgent(unit) { return "it belongs to agent \(name) (its scope \(unit))" }
            if let own = CallerProcess.own, own.unit == unit, unit.hasSuffix(".service"), caller.pid != own.pid {
                return "backstopd started it (it is in \(unit), not yet in an agent's scope)"
            }
        }
        let lineage = Set(caller.ancestors + [caller.pid, caller.session])
        return slots.values.first { slot in
            let pids = [slot.pid, slot.straySession].compactMap { $0 } + slot.strays + slot.probePIDs.values
            return !lineage.isDisjoint(with: pids)
        }.map { "it belongs to agent \($0.configuration.name) (its session or a process above it is the agent's)" }
    }

    /// The agent of a transient scope `backstop-<agent>-<pid>.scope` (``confineInScope(_:pid:)``).
    static func scopeAgent(_ unit: String) -> String? {
        guard unit.hasPrefix("backstop-"), unit.hasSuffix(".scope") else { return nil }
        let middle = unit.dropFirst("backstop-".count).dropLast(".scope".count)
        guard let dash = middle.lastIndex(of: "-"), dash > middle.startIndex,
              !middle[middle.index(after: dash)...].isEmpty, middle[middle.index(after: dash)...].allSatisfy(\.isNumber) else { return nil }
        return String(middle[..<dash])
    }
}
