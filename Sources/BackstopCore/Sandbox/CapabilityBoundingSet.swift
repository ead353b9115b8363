import Foundation

/// backstopd's own capability bounding set: the most an agent it runs itself (bubblewrap)
/// can keep of `capabilities`. A unit that starts backstopd with `CapabilityBoundingSet=`
/// narrows it; an agent run by systemd (`sandbox.engine = "systemd"`) is not bound by it.
public enum CapabilityBoundingSet {
    /// The capability names set in the `CapBnd:` line of a `/proc/PID/status` text (proc(5),
    /// a hexadecimal mask, bit N for capability N of ``SandboxSpec/knownCapabilities``);
    /// nil when the text has no such line or its mask does not parse.
    public static func names(inStatus status: String) -> Set<String>? {
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapBnd:") }),
              let mask = UInt64(line.dropFirst("CapBnd:".count).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return nil }
        let known = SandboxSpec.knownCapabilities
        return Set(known.indices.filter { $0 < 64 && mask & (1 << UInt64($0)) != 0 }.map { known[$0] })
    }

    /// This process's bounding set, from /proc/self/status; nil when it cannot be read.
    public static var current: Set<String>? {
        (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)).flatMap(names(inStatus:))
    }

    /// The capabilities of `requested` that `boundingSet` lacks, in the order requested.
    public static func missing(_ requested: [String], from boundingSet: Set<String>) -> [String] {
        requested.filter { !boundingSet.contains($0) }
    }
}
