import Foundation

/// The systemd engine: a ``SandboxSpec`` realized as unit settings (systemd.exec(5),
/// systemd.resource-control(5)), written as a drop-in for an agent's existing unit
/// (`backstopctl sandbox AGENT --drop-in`, `/etc/systemd/system/UNIT.d/backstop-sandbox.conf`).
///
/// Where systemd has a setting that says the same thing more strongly it is used:
/// `read_only_paths` holding `/` is `ProtectSystem=strict`, and `/home`, `/root` and
/// `/run/user` together in `inaccessible_paths` are `ProtectHome=yes`. The settings the
/// direct engine gets from its namespaces and its private `/dev` (private devices and
/// IPC, a read-only kernel, no new namespaces, no realtime, no set-user-ID files) are
/// always on here, as are `SystemCallArchitectures=native` and `LockPersonality=yes`.
public struct UnitSandbox: Sendable, Equatable {
    public var spec: SandboxSpec
    /// The agent's unit, for the report.
    public var unit: String
    /// Backstop's state directory: read-only to the unit in any case (backstopd's runtime drop-in says so too).
    public var stateDirectory: String

    /// The engine for `spec` applied to `unit`.
    public init(spec: SandboxSpec, unit: String, stateDirectory: String) {
        self.spec = spec
        self.unit = unit
        self.stateDirectory = stateDirectory
    }

    /// The name of the drop-in file in `/etc/systemd/system/UNIT.d/`.
    public static let dropInName = "backstop-sandbox.conf"

    /// Where the drop-in of `unit` is installed below `root` (`/` or a DESTDIR).
    public static func dropInPath(unit: String, root: String = "/") -> String {
        (root.hasSuffix("/") ? root : root + "/") + "etc/systemd/system/\(unit).d/" + dropInName
    }

    /// The `[Service]` settings, in order, and the report of what they apply.
    public func settings() -> (settings: [(key: String, value: String)], report: SandboxReport) {
        var report = SandboxReport(engine: "systemd (unit settings of \(unit), drop-in \(Self.dropInPath(unit: unit)))")
        var settings: [(key: String, value: String)] = []
        func set(_ key: String, _ value: String) { settings.append((key, value)) }

        set("User", spec.user)
        if let group = spec.group { set("Group", group) }
        report.apply("user", "User=\(spec.user)" + (spec.group.map { " Group=\($0)" } ?? ""))
        set("CapabilityBoundingSet", spec.capabilities.joined(separator: " "))
        if !spec.capabilities.isEmpty { set("AmbientCapabilities", spec.capabilities.joined(separator: " ")) }
        report.apply("capabilities", spec.capabilities.isEmpty ? "CapabilityBoundingSet= (empty: none)" : "CapabilityBoundingSet= and AmbientCapabilities= \(spec.capabilities.joined(separator: " "))")
        set("NoNewPrivileges", spec.noNewPrivileges ? "yes" : "no")
        report.apply("no_new_privileges", "NoNewPrivileges=\(spec.noNewPrivileges ? "yes" : "no")")

        var readOnly = spec.readOnlyPaths
        if readOnly.contains("/") {
            set("ProtectSystem", "strict")
            readOnly.removeAll { $0 == "/" }
        }
        for path in readOnly { set("ReadOnlyPaths", UnitFileSyntax.quoted("-" + path)) }
        report.apply("read_only_paths", (spec.readOnlyPaths.contains("/") ? ["ProtectSystem=strict"] : []).joined() + (readOnly.isEmpty ? "" : " ReadOnlyPaths=" + readOnly.joined(separator: " ")))
        for path in spec.readWritePaths { set("ReadWritePaths", UnitFileSyntax.quoted("-" + path)) }
        if !spec.readWritePaths.isEmpty { report.apply("read_write_paths", "ReadWritePaths=" + spec.readWritePaths.joined(separator: " ")) }
        set("ReadOnlyPaths", UnitFileSyntax.quoted("-" + stateDirectory))
        report.apply("state directory", "ReadOnlyPaths=\(stateDirectory) (always)")
        var inaccessible = spec.inaccessiblePaths
        let homes = ["/home", "/root", "/run/user"]
        if homes.allSatisfy(inaccessible.contains) {
            set("ProtectHome", "yes")
            inaccessible.removeAll(where: homes.contains)
        }
        for path in inaccessible { set("InaccessiblePaths", UnitFileSyntax.quoted("-" + path)) }
        if !spec.inaccessiblePaths.isEmpty {
            report.apply("inaccessible_paths", [inaccessible.count < spec.inaccessiblePaths.count ? "ProtectHome=yes" : "", inaccessible.isEmpty ? "" : "InaccessiblePaths=" + inaccessible.joined(separator: " ")].filter { !$0.isEmpty }.joined(separator: " "))
        }
        set("PrivateTmp", spec.privateTmp ? "yes" : "no")
        report.apply("private_tmp", "PrivateTmp=\(spec.privateTmp ? "yes" : "no")")
        set("PrivateNetwork", spec.privateNetwork ? "yes" : "no")
        set("RestrictAddressFamilies", spec.privateNetwork ? "AF_UNIX" : "AF_UNIX AF_INET AF_INET6 AF_NETLINK")
        report.apply("private_network", spec.privateNetwork ? "PrivateNetwork=yes RestrictAddressFamilies=AF_UNIX" : "PrivateNetwork=no RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK")
        if let bytes = spec.memoryMaxBytes {
            set("MemoryMax", SandboxSpec.formatBytes(bytes))
            report.apply("memory_max", "MemoryMax=\(SandboxSpec.formatBytes(bytes)) (cgroup)")
        }
        if let percent = spec.cpuQuotaPercent {
            set("CPUQuota", "\(percent)%")
            report.apply("cpu_quota", "CPUQuota=\(percent)% (cgroup)")
        }
        set("TasksMax", spec.tasksMax.map(String.init) ?? "infinity")
        report.apply("tasks_max", "TasksMax=\(spec.tasksMax.map(String.init) ?? "infinity") (cgroup)")
        for entry in spec.systemCallFilter { set("SystemCallFilter", entry) }
        if !spec.systemCallFilter.isEmpty {
            set("SystemCallErrorNumber", "EPERM")
            report.apply("system_call_filter", "SystemCallFilter=" + spec.systemCallFilter.joined(separator: " ") + " (seccomp; refused calls fail with EPERM)")
        }
        for (key, value) in Self.fixedHardening { set(key, value) }
        report.apply("always", Self.fixedHardening.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        return (settings, report)
    }

    /// What the direct engine's namespaces, private /dev and read-only /proc and /sys give
    /// every agent, as unit settings.
    static let fixedHardening: [(key: String, value: String)] = [
        ("PrivateDevices", "yes"), ("PrivateIPC", "yes"), ("ProtectHostname", "yes"), ("ProtectClock", "yes"),
        ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"), ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"), ("RestrictNamespaces", "yes"), ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"), ("LockPersonality", "yes"), ("SystemCallArchitectures", "native"),
    ]

    /// The drop-in file: a comment saying where it came from, then `[Service]` and the settings.
    public func dropIn() -> String {
        var text = """
            # The sandbox of a Backstop agent's unit, generated by `backstopctl sandbox AGENT --drop-in`
            # from [agent.sandbox] in the Backstop configuration. Install it as
            # \(Self.dropInPath(unit: unit)), then `systemctl daemon-reload`.
            [Service]

            """
        for (key, value) in settings().settings { text += "\(key)=\(value)\n" }
        return text
    }
}

/// Unit file syntax (systemd.syntax(7)).
public enum UnitFileSyntax {
    /// One word of a unit file setting, quoted and escaped, `%` doubled (systemd.unit(5) specifiers).
    public static func quoted(_ word: String) -> String {
        let escaped = word.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "%", with: "%%")
        return "\"" + escaped + "\""
    }
}
