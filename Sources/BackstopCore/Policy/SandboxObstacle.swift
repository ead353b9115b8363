import Foundation

/// Something of the agent's surroundings that its own error output names as the reason it
/// failed: the sandbox (or a preflight instance's throwaway copy of it) in the way, not the
/// content. Found by ``find(in:)`` in the last lines the agent wrote to stderr; each names
/// the setting to open. It never changes what a failure counts as (``Attribution``): with a
/// version to compare with, the comparison decides; it is what Backstop says.
public enum SandboxObstacle: String, Sendable, Codable, Equatable, CaseIterable {
    /// EROFS, "Read-only file system": the agent writes below a path the sandbox mounts read-only.
    case readOnlyFileSystem = "read-only-file-system"
    /// EACCES, "Permission denied": the sandbox's user cannot open what the agent opens.
    case permissionDenied = "permission-denied"
    /// EAGAIN from fork(2), "Resource temporarily unavailable" or "Cannot fork": the process limit.
    case processLimit = "process-limit"
    /// ECONNREFUSED, ENETUNREACH, a failed name lookup: the agent cannot reach a service.
    case network
    /// EADDRINUSE, "Address already in use": a fixed port or socket someone else holds.
    case addressInUse = "address-in-use"
    /// "Failed to connect to bus", the system D-Bus socket or systemd's private socket: the
    /// service manager, which the sandbox hides unless `allow_service_manager`.
    case serviceManager = "service-manager"

    /// The obstacle the last line of `output` that names one names, nil when none does.
    /// Lines are compared without regard to case, as strerror(3) words them in the C locale
    /// and as glibc, bash, Python and Go programs print them. EAGAIN counts as the process
    /// limit only next to a fork, clone, spawn or thread (on its line or the three before:
    /// Python's traceback names `os.fork()` above its `BlockingIOError`).
    public static func find(in output: String) -> SandboxObstacle? {
        let lines = output.split(whereSeparator: \.isNewline).map { $0.lowercased() }
        for (index, line) in lines.enumerated().reversed() {
            // Before "permission denied": the hidden sockets refuse with EACCES or ECONNREFUSED.
            if ["failed to connect to bus", "system_bus_socket", "/run/systemd/private"].contains(where: line.contains) { return .serviceManager }
            if line.contains("read-only file system") { return .readOnlyFileSystem }
            if line.contains("cannot fork") || line.contains("can't fork") || line.contains("can't create new thread") { return .processLimit }
            if line.contains("resource temporarily unavailable"),
                lines[max(0, index - 3)...index].contains(where: { line in ["fork", "clone", "spawn", "thread"].contains(where: line.contains) }) {
                return .processLimit
            }
            // clamd: "Can't open /var/log/clamav/clamav.log in append mode (check permissions!)."
            if line.contains("permission denied") || line.contains("(check permissions") { return .permissionDenied }
            if line.contains("address already in use") { return .addressInUse }
            if ["connection refused", "network is unreachable", "no route to host",
                "temporary failure in name resolution", "name or service not known"].contains(where: line.contains) {
                return .network
            }
        }
        return nil
    }

    /// The errno the output shows (`EROFS`).
    public var errnoName: String {
        switch self {
        case .readOnlyFileSystem: return "EROFS"
        case .permissionDenied: return "EACCES"
        case .processLimit: return "EAGAIN from fork"
        case .network: return "ECONNREFUSED"
        case .addressInUse: return "EADDRINUSE"
        case .serviceManager: return "EACCES or ECONNREFUSED on the bus"
        }
    }

    /// The `[agent.sandbox]` key to look at (`read_write_paths`).
    public var setting: String {
        switch self {
        case .readOnlyFileSystem: return "read_write_paths"
        case .permissionDenied: return "user"
        case .processLimit: return "tasks_max"
        case .network, .addressInUse: return "private_network"
        case .serviceManager: return "allow_service_manager"
        }
    }

    /// What the output shows, as part of a sentence: "a read-only file system (EROFS)".
    public var explanation: String {
        switch self {
        case .readOnlyFileSystem: return "a write to a read-only file system (EROFS)"
        case .permissionDenied: return "a permission denied (EACCES)"
        case .processLimit: return "a fork refused for the process limit (EAGAIN)"
        case .network: return "a connection that could not be made (network unreachable or refused)"
        case .addressInUse: return "an address already in use (EADDRINUSE)"
        case .serviceManager: return "a connection to systemd or the system D-Bus that was refused"
        }
    }

    /// What to open, one clause an operator can act on.
    public var remedy: String {
        switch self {
        case .readOnlyFileSystem:
            return "add the path it writes (its log file, pid file or database directory) to read_write_paths"
        case .permissionDenied:
            return "check user and group (the agent runs as the sandbox's user, nobody by default) against the owner and mode of what it opens, and read_write_paths"
        case .processLimit:
            return "raise tasks_max or give the agent a user of its own: without a cgroup tasks_max is RLIMIT_NPROC, shared with every process of that user on the host"
        case .network:
            return "set private_network = false if the agent talks to services on the host (its own network has only a loopback device, and abstract Unix sockets, such as usbguard's, are the host network's)"
        case .addressInUse:
            return "check private_network and the ports or sockets the agent binds"
        case .serviceManager:
            return "set allow_service_manager = true if the agent must talk to systemd or over the system D-Bus (as root it can then start processes outside its sandbox)"
        }
    }

    /// One sentence for a decision's message and `status`: what the output shows, the setting and where to see it.
    public func sentence(agent: String) -> String {
        "Its output shows \(explanation): the sandbox may be in the way; \(remedy) (see `backstopctl sandbox \(agent)`)."
    }
}
