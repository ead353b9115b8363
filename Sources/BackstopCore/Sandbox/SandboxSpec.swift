import Foundation

/// The `[agent.sandbox]` table: one description of the agent's confinement that both
/// engines realize, bubblewrap for agents backstopd runs itself (``BubblewrapSandbox``)
/// and unit properties under systemd (``UnitSandbox``). The keys follow systemd.exec(5)
/// and systemd.resource-control(5), whose meaning they keep.
///
/// The defaults suit an agent that only reads its content and writes nothing but the
/// paths it is given: an unprivileged user, no capabilities, no new privileges, the whole
/// file system read-only, home directories hidden, a private `/tmp`, no network, at most
/// 512 tasks and systemd's `@system-service` system calls.
public struct SandboxSpec: Sendable, Equatable {
    /// `engine`, default `"bubblewrap"`: how an agent backstopd runs (`runner = "direct"`) is
    /// sandboxed; `"systemd"` runs it as a transient unit with these settings as its
    /// properties (backstopd must run under systemd). A unit agent's sandbox is its drop-in.
    public var engine = SandboxEngine.bubblewrap
    /// `user`, default `"nobody"`: the user (name or numeric uid) the agent runs as.
    public var user = "nobody"
    /// `group`, default: the user's primary group.
    public var group: String?
    /// `capabilities`, default `[]`: the capabilities (`CAP_NET_ADMIN`, ...) the agent keeps;
    /// every other one leaves its bounding set (capabilities(7)).
    public var capabilities: [String] = []
    /// `no_new_privileges`, default true: PR_SET_NO_NEW_PRIVS (prctl(2)); set-user-ID
    /// programs and file capabilities give the agent nothing.
    public var noNewPrivileges = true
    /// `read_only_paths`, default `["/"]`: mounted read-only in the agent's view.
    public var readOnlyPaths = ["/"]
    /// `read_write_paths`, default `[]`: writable in the agent's view, even below a read-only path.
    public var readWritePaths: [String] = []
    /// `inaccessible_paths`, default `["/home", "/root", "/run/user"]`: replaced in the agent's
    /// view by an empty directory or file that even root without capabilities cannot read.
    public var inaccessiblePaths = ["/home", "/root", "/run/user"]
    /// `allow_service_manager`, default false: whether the agent may reach the service manager:
    /// systemd's own sockets (``serviceManagerPaths``) and the system D-Bus, over which
    /// `systemctl` and `systemd-run` act. By default they are hidden as inaccessible paths are,
    /// for every user: root, even without capabilities, could have systemd start processes
    /// for it outside the sandbox.
    public var allowServiceManager = false
    /// `private_tmp`, default true: `/tmp` and `/var/tmp` are empty and the agent's own.
    public var privateTmp = true
    /// `tmp_size`, default a quarter of `memory_max`, or 256M without one: the most bytes each
    /// of the private `/tmp` and `/var/tmp` holds (tmpfs size=, written as `memory_max` is), so
    /// that files there cannot fill the host's memory. Nil is the default (``privateTmpSizeBytes``).
    public var tmpSizeBytes: UInt64?
    /// The size each private tmpfs gets: `tmp_size`, else the default.
    public var privateTmpSizeBytes: UInt64 { tmpSizeBytes ?? memoryMaxBytes.map { max($0 / 4, 1 << 20) } ?? 256 << 20 }
    /// `private_network`, default true: a network namespace with only a loopback device.
    /// Unix sockets bound to a path (the notify socket, clamd's control socket) still work;
    /// abstract ones (a name starting with NUL, `@` in ss(8), usbguard's) belong to the
    /// network namespace and are out of reach.
    public var privateNetwork = true
    /// `memory_max`, default none: the most memory the agent may use, in bytes
    /// (written as an integer or with a K, M, G or T suffix, 1024-based).
    public var memoryMaxBytes: UInt64?
    /// `cpu_quota`, default none: CPU time relative to one CPU, in percent (`"50%"`; 200 is two CPUs).
    public var cpuQuotaPercent: Int?
    /// `tasks_max`, default 512: the most processes and threads the agent may have; nil is no limit (`"infinity"`).
    public var tasksMax: Int? = 512
    /// `system_call_filter`, default `["@system-service"]`: systemd's SystemCallFilter= entries,
    /// each a group (`@system-service`) or system call name; a leading `~` denies instead.
    public var systemCallFilter = ["@system-service"]

    /// The defaults.
    public init() {}

    /// The engines an agent backstopd runs can be sandboxed by.
    public enum SandboxEngine: String, Sendable, Equatable {
        /// bwrap(1), ``BubblewrapSandbox``.
        case bubblewrap
        /// A transient systemd unit, ``UnitSandbox``.
        case systemd
    }

    /// The sockets of the service manager that ``allowServiceManager`` leaves reachable:
    /// systemd's private bus (systemctl and systemd-run as root use it, systemd(1)), its
    /// Varlink sockets, the SysV `/run/initctl` FIFO (systemd-initctl(8): a runlevel written
    /// there reloads or powers off the machine, and a FIFO opens for writing on a read-only
    /// mount), journald's Varlink socket (systemd-journald(8): `RelinquishVar` would move
    /// every later entry, decisions included, to volatile storage), and the directory of the
    /// system D-Bus socket (through which org.freedesktop.systemd1 is reached too), also
    /// where /var/run is not a symlink to /run. The journal's logging sockets stay reachable.
    public static let serviceManagerPaths = [
        "/run/systemd/private", "/run/systemd/io.systemd.Manager", "/run/systemd/io.system.ManagedOOM", "/run/initctl",
        "/run/systemd/journal/io.systemd.journal", "/run/dbus", "/var/run/dbus",
    ]

    /// Every capability of capabilities(7) as of Linux 6.x, in kernel order.
    public static let knownCapabilities = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]

    /// systemd's system call groups (systemd.exec(5), "System Call Filtering"; systemd 252).
    public static let knownSystemCallGroups: Set<String> = [
        "@aio", "@basic-io", "@chown", "@clock", "@cpu-emulation", "@debug", "@default", "@file-system", "@io-event",
        "@ipc", "@keyring", "@known", "@memlock", "@module", "@mount", "@network-io", "@obsolete", "@pkey", "@privileged",
        "@process", "@raw-io", "@reboot", "@resources", "@sandbox", "@setuid", "@signal", "@swap", "@sync",
        "@system-service", "@timer",
    ]

    /// What the report says when `read_only_paths` does not hold `/`.
    static let writableRootNote = "/ is not among them: the rest of the file system is writable to the agent, as far as its user may write (as with systemd's ReadOnlyPaths= without ProtectSystem=)"

    /// Whether `name` is a user or group as `user`/`group` accept it: a number, or a
    /// name of the portable shape useradd(8) allows (`[a-z_][a-z0-9_-]*`, optionally ending in `$`).
    static func isValidAccountName(_ name: String) -> Bool {
        if !name.isEmpty, name.allSatisfy(\.isASCII), UInt32(name) != nil { return true }
        var scalars = Array(name.unicodeScalars)
        guard !scalars.isEmpty, scalars.count <= 32 else { return false }
        if scalars.last == "$" { scalars.removeLast() }
        guard let first = scalars.first, ("a"..."z").contains(first) || first == "_" else { return false }
        return scalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }

    /// `text` as a system call filter entry, or why it is not one.
    static func filterEntryProblem(_ entry: String) -> String? {
        let name = entry.hasPrefix("~") ? String(entry.dropFirst()) : entry
        if name.hasPrefix("@") {
            return knownSystemCallGroups.contains(name)
                ? nil : "\"\(name)\" is not one of systemd's system call groups (\(knownSystemCallGroups.sorted().joined(separator: " ")))"
        }
        let valid = !name.isEmpty && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" }
        return valid ? nil : "\"\(entry)\" is neither a system call group (@name) nor a system call name"
    }

    /// `text` (`"512M"`, `"2G"`, `"1048576"`) in bytes, nil when it is not a size.
    static func bytes(of text: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(text)
        var multiplier: UInt64 = 1
        if let last = digits.last, let unit = units[last] {
            multiplier = unit
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let value = UInt64(digits), value > 0 else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }

    /// `bytes` the way `memory_max` is written: the largest exact unit.
    public static func formatBytes(_ bytes: UInt64) -> String {
        for (suffix, unit) in [("T", UInt64(1) << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] where bytes % unit == 0 {
            return "\(bytes / unit)\(suffix)"
        }
        return String(bytes)
    }
}
