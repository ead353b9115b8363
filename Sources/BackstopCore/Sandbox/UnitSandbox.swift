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
/// Backstop's runtime directory is always inaccessible (a unit's notify socket is systemd's
/// own), and so are the service manager's sockets unless `allow_service_manager` is set.
public struct UnitSandbox: Sendable, Equatable {
    /// What to apply.
    public var spec: SandboxSpec
    /// The agent's unit, for the report.
    public var unit: String
    /// Backstop's state directory: read-only to the unit in any case (backstopd's runtime drop-in says so too).
    public var stateDirectory: String
    /// Backstop's runtime directory, with its control socket: inaccessible to the unit in any case.
    public var runtimeDirectory: String
    /// Whether `unit` is the agent's transient unit (properties at each start) rather than its own (a drop-in).
    public var isTransient: Bool

    /// The engine for `spec` applied to `unit`.
    public init(spec: SandboxSpec, unit: String, stateDirectory: String, runtimeDirectory: String, isTransient: Bool = false) {
        self.spec = spec
        self.unit = unit
        self.stateDirectory = stateDirectory
        self.runtimeDirectory = runtimeDirectory
        self.isTransient = isTransient
    }

    /// The name of the drop-in file in `/etc/systemd/system/UNIT.d/`.
    public static let dropInName = "backstop-sandbox.conf"

    /// Where the drop-in of `unit` is installed below `root` (`/` or a DESTDIR).
    public static func dropInPath(unit: String, root: String = "/") -> String {
        (root.hasSuffix("/") ? root : root + "/") + "etc/systemd/system/\(unit).d/" + dropInName
    }

    /// The `[Service]` settings, in order, and the report of what they apply.
    public func settings() -> (settings: [UnitSetting], report: SandboxReport) {
        var report = SandboxReport(engine: isTransient
            ? "systemd (transient unit \(unit), its properties set over D-Bus at each start)"
            : "systemd (unit settings of \(unit), drop-in \(Self.dropInPath(unit: unit)))")
        var settings: [UnitSetting] = []
        func set(_ key: String, _ value: UnitValue) { settings.append(UnitSetting(key: key, value: value)) }

        set("User", .string(spec.user))
        if let group = spec.group { set("Group", .string(group)) }
        report.apply("user", "User=\(spec.user)" + (spec.group.map { " Group=\($0)" } ?? ""))
        set("CapabilityBoundingSet", .capabilities(spec.capabilities))
        if !spec.capabilities.isEmpty { set("AmbientCapabilities", .capabilities(spec.capabilities)) }
        report.apply("capabilities", spec.capabilities.isEmpty ? "CapabilityBoundingSet= (empty: none)" : "CapabilityBoundingSet= and AmbientCapabilities= \(spec.capabilities.joined(separator: " "))")
        set("NoNewPrivileges", .bool(spec.noNewPrivileges))
        report.apply("no_new_privileges", "NoNewPrivileges=\(spec.noNewPrivileges ? "yes" : "no")")

        var readOnly = spec.readOnlyPaths
        if readOnly.contains("/") {
            set("ProtectSystem", .string("strict"))
            readOnly.removeAll { $0 == "/" }
            // ProtectKernelTunables= and ProtectControlGroups= imply MountAPIVFS=; where systemd
            // cannot take the old /proc away (mounts below it that are not its own, as in a
            // container) the fresh one leaves /run and the mounts in it writable (systemd 252).
            // ProtectSystem=strict leaves the home directories to ProtectHome=, which makes
            // them read-only only all three together.
            let named = ["/run"] + Self.homes.filter { !spec.inaccessiblePaths.contains($0) }
            readOnly.insert(contentsOf: named.filter { !spec.readWritePaths.contains($0) && !readOnly.contains($0) }, at: 0)
        } else {
            report.skip("read_only_paths", SandboxSpec.writableRootNote)
        }
        if !readOnly.isEmpty { set("ReadOnlyPaths", .paths(readOnly)) }
        report.apply("read_only_paths", ((spec.readOnlyPaths.contains("/") ? ["ProtectSystem=strict"] : []) + (readOnly.isEmpty ? [] : ["ReadOnlyPaths=" + readOnly.joined(separator: " ")])).joined(separator: " ")
            + (readOnly.contains("/run") && !spec.readOnlyPaths.contains("/run") ? " (/run and the home directories not hidden named too: with the API file systems mounted afresh systemd can leave /run writable, and ProtectSystem=strict leaves the home directories to ProtectHome=)" : ""))
        if !spec.readWritePaths.isEmpty {
            set("ReadWritePaths", .paths(spec.readWritePaths))
            report.apply("read_write_paths", "ReadWritePaths=" + spec.readWritePaths.joined(separator: " "))
        }
        set("ReadOnlyPaths", .paths([stateDirectory]))
        report.apply("state directory", "ReadOnlyPaths=\(stateDirectory) (always)")
        var inaccessible = spec.inaccessiblePaths
        if Self.homes.allSatisfy(inaccessible.contains) {
            set("ProtectHome", .string("yes"))
            inaccessible.removeAll(where: Self.homes.contains)
        }
        if !inaccessible.isEmpty { set("InaccessiblePaths", .paths(inaccessible)) }
        if !spec.inaccessiblePaths.isEmpty {
            report.apply("inaccessible_paths", [inaccessible.count < spec.inaccessiblePaths.count ? "ProtectHome=yes" : "", inaccessible.isEmpty ? "" : "InaccessiblePaths=" + inaccessible.joined(separator: " ")].filter { !$0.isEmpty }.joined(separator: " "))
        }
        set("InaccessiblePaths", .paths([runtimeDirectory]))
        report.apply("runtime directory", "InaccessiblePaths=\(runtimeDirectory) (always: no control socket)")
        if spec.allowServiceManager {
            report.apply("allow_service_manager", "yes: systemd's sockets and the system D-Bus stay reachable (as root, the unit can start processes outside this sandbox)")
        } else {
            set("InaccessiblePaths", .paths(SandboxSpec.serviceManagerPaths))
            report.apply("allow_service_manager", "no: InaccessiblePaths=" + SandboxSpec.serviceManagerPaths.joined(separator: " ") + ": systemctl, systemd-run and D-Bus clients cannot reach systemd")
        }
        set("PrivateTmp", .bool(spec.privateTmp))
        report.apply("private_tmp", spec.privateTmp ? "PrivateTmp=yes (directories of the unit's own in the host's /tmp and /var/tmp, bounded by their file systems, not by tmp_size)" : "PrivateTmp=no")
        if spec.privateTmp, let bytes = spec.tmpSizeBytes {
            report.skip("tmp_size", "\(SandboxSpec.formatBytes(bytes)): PrivateTmp= is directories in the host's /tmp and /var/tmp, not a tmpfs of the agent's, so it is bounded by their file systems")
        }
        set("PrivateNetwork", .bool(spec.privateNetwork))
        let families = spec.privateNetwork ? ["AF_UNIX"] : ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
        set("RestrictAddressFamilies", .allowList(families))
        report.apply("private_network", "PrivateNetwork=\(spec.privateNetwork ? "yes" : "no") RestrictAddressFamilies=\(families.joined(separator: " "))")
        settings += Self.limitSettings(spec)
        if let bytes = spec.memoryMaxBytes { report.apply("memory_max", "MemoryMax=\(SandboxSpec.formatBytes(bytes)) (cgroup)") }
        if let percent = spec.cpuQuotaPercent { report.apply("cpu_quota", "CPUQuota=\(percent)% (cgroup)") }
        report.apply("tasks_max", "TasksMax=\(spec.tasksMax.map(String.init) ?? "infinity") (cgroup)")
        for entry in spec.systemCallFilter { set("SystemCallFilter", .filter(entry)) }
        if !spec.systemCallFilter.isEmpty {
            set("SystemCallErrorNumber", .string("EPERM"))
            report.apply("system_call_filter", "SystemCallFilter=" + spec.systemCallFilter.joined(separator: " ") + " (seccomp; refused calls fail with EPERM)")
        }
        for key in Self.fixedHardening { set(key, .bool(true)) }
        set("RestrictNamespaces", .bool(true))
        set("SystemCallArchitectures", .string("native"))
        report.apply("always", (Self.fixedHardening + ["RestrictNamespaces"]).map { "\($0)=yes" }.joined(separator: " ") + " SystemCallArchitectures=native")
        return (settings, report)
    }

    /// The directories `ProtectHome=` covers.
    static let homes = ["/home", "/root", "/run/user"]

    /// What the direct engine's namespaces, private /dev and read-only /proc and /sys give
    /// every agent, as unit settings that are `yes`.
    static let fixedHardening = [
        "PrivateDevices", "PrivateIPC", "ProtectHostname", "ProtectClock", "ProtectKernelTunables", "ProtectKernelModules",
        "ProtectKernelLogs", "ProtectControlGroups", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
    ]

    /// The resource limits of `spec` (systemd.resource-control(5)): `MemoryMax=`, `CPUQuota=`, `TasksMax=`.
    static func limitSettings(_ spec: SandboxSpec) -> [UnitSetting] {
        var settings: [UnitSetting] = []
        if let bytes = spec.memoryMaxBytes { settings.append(UnitSetting(key: "MemoryMax", value: .bytes(bytes))) }
        if let percent = spec.cpuQuotaPercent { settings.append(UnitSetting(key: "CPUQuota", value: .percent(percent))) }
        settings.append(UnitSetting(key: "TasksMax", value: .count(spec.tasksMax)))
        return settings
    }

    /// The settings as a transient unit's properties (org.freedesktop.systemd1(5)): the same
    /// settings as the drop-in, in the D-Bus types systemd takes for them.
    public func busProperties() -> [(String, BusValue)] {
        settings().settings.map(Self.busProperty)
    }

    /// Only the resource limits of `spec`, as D-Bus properties: what a transient scope around
    /// an agent bubblewrap runs takes (systemd.scope(5) has no sandboxing of its own).
    public static func cgroupProperties(_ spec: SandboxSpec) -> [(String, BusValue)] {
        limitSettings(spec).map(busProperty)
    }

    /// One setting as a D-Bus property: its name and value in the type systemd takes for it.
    private static func busProperty(_ setting: UnitSetting) -> (String, BusValue) {
        switch (setting.key, setting.value) {
        case ("SystemCallErrorNumber", _): return (setting.key, .int32(EPERM))
        case ("SystemCallArchitectures", .string(let name)): return (setting.key, .strings([name]))
        case ("RestrictNamespaces", .bool(let restricted)):
            // The namespaces still allowed: none, or all (CLONE_NEW* flags).
            return (setting.key, .uint64(restricted ? 0 : ~0))
        case (_, .string(let text)): return (setting.key, .string(text))
        case (_, .bool(let flag)): return (setting.key, .bool(flag))
        case (_, .paths(let paths)): return (setting.key, .strings(paths.map { "-" + $0 }))
        case (_, .capabilities(let names)):
            let mask = names.compactMap { SandboxSpec.knownCapabilities.firstIndex(of: $0) }.reduce(UInt64(0)) { $0 | 1 << UInt64($1) }
            return (setting.key, .uint64(mask))
        case (_, .allowList(let names)): return (setting.key, .list(allow: true, names))
        case (_, .filter(let entry)):
            return (setting.key, entry.hasPrefix("~") ? .list(allow: false, [String(entry.dropFirst())]) : .list(allow: true, [entry]))
        case (_, .bytes(let bytes)): return (setting.key, .uint64(bytes))
        case (_, .percent(let percent)): return ("CPUQuotaPerSecUSec", .uint64(UInt64(percent) * 10_000))
        case (_, .count(let count)): return (setting.key, .uint64(count.map(UInt64.init) ?? .max))
            }
    }

    /// The drop-in file: a comment saying where it came from, then `[Service]` and the settings.
    public func dropIn() -> String {
        var text = """
            # The sandbox of a Backstop agent's unit, generated by `backstopctl sandbox AGENT --drop-in`
            # from [agent.sandbox] in the Backstop configuration. Install it as
            # \(Self.dropInPath(unit: unit)), then `systemctl daemon-reload`.
            [Service]

            """
        for setting in settings().settings { text += "\(setting.key)=\(setting.value.unitFileText)\n" }
        return text
    }
}

/// One unit setting: its key (systemd.exec(5), systemd.resource-control(5)) and value.
public struct UnitSetting: Sendable, Equatable {
    /// The setting's name, e.g. `ProtectSystem`.
    public var key: String
    /// Its value.
    public var value: UnitValue
}

/// A unit setting's value, in the forms both a unit file and a transient unit's D-Bus
/// properties (org.freedesktop.systemd1(5)) take.
public enum UnitValue: Sendable, Equatable {
    case string(String)
    case bool(Bool)
    /// Paths, missing ones ignored (the `-` prefix).
    case paths([String])
    /// Capability names; empty is none.
    case capabilities([String])
    /// Address families allowed (RestrictAddressFamilies=).
    case allowList([String])
    /// A system call filter entry, `~` denying.
    case filter(String)
    case bytes(UInt64)
    case percent(Int)
    /// A count; nil is `infinity`.
    case count(Int?)

    /// The value as a unit file writes it.
    public var unitFileText: String {
        switch self {
        case .string(let text): return text
        case .bool(let value): return value ? "yes" : "no"
        case .paths(let paths): return paths.map { UnitFileSyntax.quoted("-" + $0) }.joined(separator: " ")
        case .capabilities(let names), .allowList(let names): return names.joined(separator: " ")
        case .filter(let entry): return entry
        case .bytes(let bytes): return SandboxSpec.formatBytes(bytes)
        case .percent(let percent): return "\(percent)%"
        case .count(let count): return count.map(String.init) ?? "infinity"
        }
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
