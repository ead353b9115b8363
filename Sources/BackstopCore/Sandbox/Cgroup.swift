import Foundation

/// The unified cgroup hierarchy (cgroup v2, /sys/fs/cgroup) as backstopd reads it: where it
/// runs itself, and the OOM kills counted in a cgroup's `memory.events`.
public enum Cgroup {
    /// Where the hierarchy is mounted.
    static let mountPoint = "/sys/fs/cgroup"

    /// Whether /sys/fs/cgroup is the unified hierarchy with the memory controller (its
    /// `cgroup.controllers` lists `memory`): only then does a transient scope's MemoryMax= hold
    /// here. Not under cgroup v1 or a hybrid hierarchy, nor in a container it is not delegated to.
    public static var memoryControllerAvailable: Bool {
        guard let text = try? String(contentsOfFile: mountPoint + "/cgroup.controllers", encoding: .utf8) else { return false }
        return text.split(whereSeparator: \.isWhitespace).contains("memory")
    }

    /// The slice backstopd runs in (the parent of its own cgroup, `0::PATH` in
    /// /proc/self/cgroup), when that is a slice: its unit name (`system.slice`) and its
    /// cgroup's directory. The agents' transient scopes go there: it lives as long as backstopd.
    public static var ownSlice: (unit: String, directory: String)? {
        guard let text = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { return nil }
        let parent = (String(line.dropFirst(3)) as NSString).deletingLastPathComponent
        let unit = (parent as NSString).lastPathComponent
        guard unit.hasSuffix(".slice") else { return nil }
        return (unit, mountPoint + parent)
    }

    /// The `oom_kill` count of `directory`'s `memory.events`: OOM kills in that cgroup and
    /// every cgroup below it (cgroup-v2.rst); nil when it cannot be read (no memory controller there).
    public static func oomKills(in directory: String) -> Int? {
        guard let text = try? String(contentsOfFile: directory + "/memory.events", encoding: .utf8) else { return nil }
        return text.split(separator: "\n").lazy.compactMap { line -> Int? in
            let fields = line.split(separator: " ")
            return fields.count == 2 && fields[0] == "oom_kill" ? Int(fields[1]) : nil
        }.first
    }
}
