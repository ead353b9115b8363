import CSystemd
import Foundation
import SystemPackage

/// The direct engine: a ``SandboxSpec`` realized with bubblewrap, bwrap(1), for agents
/// that backstopd runs itself. The command line is
///
///     bwrap NAMESPACES MOUNTS CAPABILITIES --die-with-parent --new-session --
///         setpriv USER GROUP CAPABILITIES [--no-new-privs] --
///         bash -c 'RLIMITS; echo READY-LINE >&0; exec PROGRAM' PROGRAM ARGUMENTS
///
/// bwrap (run as root, without a user namespace) makes the mount, IPC, UTS, cgroup and
/// (with `private_network`) network namespaces, binds the file system read-only, the
/// writable paths writable and Backstop's state directory read-only on top, hides Backstop's
/// runtime directory (its control socket) but for the run's own notify socket, masks the
/// inaccessible paths and the service manager's sockets (unless `allow_service_manager`), and keeps only the listed capabilities plus the three setpriv(1)
/// needs to change user; setpriv then switches to the agent's user, drops those three
/// from every set (bounding, inheritable, ambient) and sets no_new_privs; bash lowers
/// the resource limits, says on its stdin (the runner's pipe) that the sandbox is set up,
/// sets `WATCHDOG_PID` to the agent's pid when `WATCHDOG_USEC` is set (sd_watchdog_enabled(3)),
/// and execs the agent (bash adds only `SHLVL` to the environment it was given), with `execfail` so that a program that cannot be executed in the
/// sandbox exits 203 (systemd's EXIT_EXEC). A run that ends before the ready line or with
/// 203 never counts against the content. Every step execs the next: the agent keeps the
/// pid bwrap gave it.
///
/// Resource limits are rlimits (setrlimit(2)): `memory_max` is RLIMIT_DATA (only where there is
/// no transient scope: a cgroup's MemoryMax= then holds it instead, as a failed allocation
/// inside the agent would look like a content failure), `tasks_max` is RLIMIT_NPROC (counted
/// per user, and not enforced for root); `cpu_quota` and `system_call_filter` have no
/// equivalent here and are reported as not applied.
public struct BubblewrapSandbox: Sendable, Equatable {
    /// bubblewrap, from Debian's `bubblewrap` package.
    public static let program = "/usr/bin/bwrap"
    static let setpriv = "/usr/bin/setpriv"
    /// The group bubblewrap runs in (made by Backstop's sysusers.d file). bwrap's outer
    /// process stays in the host's namespaces as root with every capability dropped and
    /// dumpable; a root agent without capabilities would pass ptrace(2)'s access check to
    /// it (same uid, same gid, a superset of its empty capability set) and reach the host's
    /// file system through its /proc/PID/root. In a group of its own it fails that check
    /// ("the caller's fsgid matches the target's gids", ptrace(2), PTRACE_MODE_FSCREDS), and
    /// no agent may run in this group (``SandboxAccount/resolve(_:)``).
    public static let launcherGroupName = "backstop-sandbox"
    /// The gid bubblewrap runs in where ``launcherGroupName`` does not exist: one in the
    /// range systemd leaves unused (docs/UIDS-GIDS.md), below 2^31.
    public static let fallbackLauncherGroupID: gid_t = 2_147_483_646

    /// The gid of ``launcherGroupName``, else ``fallbackLauncherGroupID`` (getgrnam(3)).
    public static var launcherGroupID: gid_t {
        getgrnam(launcherGroupName).map { $0.pointee.gr_gid } ?? fallbackLauncherGroupID
    }
    static let shell = "/bin/bash"
    /// The exit code of the last step when the program cannot be executed (systemd's EXIT_EXEC).
    static let execFailedCode: Int32 = 203
    /// What the last step writes on its stdin (the runner's status pipe) once the sandbox is
    /// set up, just before it execs the agent: a failure before it is the sandbox's, not the agent's.
    static let readyLine = "backstop-sandbox-ready"
    /// The `$0` of the sandbox's shell, which prefixes what it says itself ("backstop-sandbox: line 1: ... Segmentation fault").
    static let shellName = "backstop-sandbox"
    /// Capabilities setpriv needs to change the user and drop capabilities; it drops them itself.
    static let setprivCapabilities = ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"]

    /// What to apply.
    public var spec: SandboxSpec
    /// Whom the agent runs as (`spec`'s user and group, looked up).
    public var account: SandboxAccount
    /// Backstop's state and runtime directories: never writable to the agent, on top of
    /// everything else; the state directory is read-only (the agent reads its content there).
    public var protectedDirectories: [String]
    /// Backstop's runtime directory (one of ``protectedDirectories``): an empty tmpfs in the
    /// sandbox but for ``notifyDirectory``, so that no agent reaches the control socket, even
    /// as root. Nil leaves it read-only like the state directory.
    public var runtimeDirectory: String?
    /// `<runtime_directory>/inaccessible`, holding the mode-0000 `directory` and `file`
    /// mounted over inaccessible paths (as systemd's /run/systemd/inaccessible).
    public var placeholderDirectory: String
    /// Whether backstopd puts the agent into a transient scope with the cgroup limits
    /// (`MemoryMax=`, `TasksMax=`, `CPUQuota=`): when systemd runs the machine (sd_booted(3)).
    public var cgroupScope = scopesAvailable
    /// Whether systemd runs the machine (sd_booted(3)), so that backstopd can make transient scopes.
    public static var scopesAvailable: Bool { sd_booted() > 0 }
    /// Whether the transient scope's cgroup holds `memory_max` (MemoryMax=), so that the sandbox
    /// sets no RLIMIT_DATA: a failed allocation inside the agent would look like a content failure.
    public var memoryInScope = memoryCgroupUnavailableReason == nil
    /// Why no cgroup can hold an agent's `memory_max` here, so that it is RLIMIT_DATA only; nil when one can.
    public static var memoryCgroupUnavailableReason: String? {
        if !scopesAvailable { return "systemd does not run this machine, so there is no transient scope (cgroup) to hold the agent in" }
        if !Cgroup.memoryControllerAvailable {
            return "/sys/fs/cgroup is not a unified (v2) hierarchy with the memory controller (cgroup v1 or hybrid, or a container it is not delegated to), so the agent's transient scope cannot hold it"
        }
        return nil
    }
    static let scopeNote = "the transient scope backstop-<agent>-<pid>.scope (cgroup)"

    /// `<runtime_directory>/notify`, where backstopd makes the notify sockets: an empty tmpfs
    /// in the sandbox but for ``notifySocket``, so that no agent reaches another's socket
    /// (nor an earlier run's). Nil leaves it as the rest of the runtime directory.
    public var notifyDirectory: String?
    /// The run's own notify socket (a path in ``notifyDirectory``), bound at the same path; nil
    /// for a run that gets none (a check).
    public var notifySocket: String?

    /// Writable paths replaced by another directory (a preflight's private copies), by path.
    public var substitutes: [String: String] = [:]
    /// A directory mounted read-only over another, after Backstop's directories: a preflight's
    /// candidate over the version directory its agent's `content_link` leads to, so that the
    /// instance finds the candidate through the link (in its own mount namespace only). Nil for none.
    public var contentOverlay: ContentOverlay?
    /// A preflight candidate (a version directory) and the directory it is mounted over.
    public struct ContentOverlay: Sendable, Equatable {
        /// The candidate's directory.
        public var candidate: String
        /// Where the agent's `content_link` leads on the host (resolved), for the live version.
        public var linkTarget: String
    }
    /// Whether the process gets a PID namespace of its own, with a /proc that shows only it
    /// (a preflight: it must not see, signal or reach the live agent). bash stays its PID 1
    /// and runs the agent as its child: the kernel ignores the signals an init sends itself
    /// without a handler, so an agent that raises SIGSEGV or SIGABRT would survive as PID 1.
    /// bash then exits with the agent's code, or 128 + N for signal N.
    public var privateProcesses = false

    /// An engine for `spec` run as `account`.
    public init(spec: SandboxSpec, account: SandboxAccount, protectedDirectories: [String], placeholderDirectory: String) {
        self.spec = spec
        self.account = account
        self.protectedDirectories = protectedDirectories
        self.placeholderDirectory = placeholderDirectory
    }

    /// The sandbox of `agent` run by a daemon configured with `daemon`.
    /// - Throws: ``SandboxError`` when its user or group does not exist.
    public init(agent: AgentConfiguration, daemon: DaemonConfiguration) throws(SandboxError) {
        self.init(
            spec: agent.sandbox, account: try SandboxAccount.resolve(agent.sandbox),
            protectedDirectories: [daemon.stateDirectory, daemon.runtimeDirectory], placeholderDirectory: daemon.placeholderDirectory)
        runtimeDirectory = daemon.runtimeDirectory
        notifyDirectory = daemon.notifyDirectory
    }

    /// The sandbox of `agent` to run it on the content at `contentPath`.
    /// - Throws: ``SandboxError`` when its user or group does not exist, a writable path does
    ///   not exist (the sandbox cannot make it in a read-only parent), or its user cannot
    ///   reach the content: each would otherwise be blamed on the content.
    public init(agent: AgentConfiguration, daemon: DaemonConfiguration, contentPath: String) throws(SandboxError) {
        try self.init(agent: agent, daemon: daemon)
        if let missing = spec.readWritePaths.first(where: { !Self.exists($0) }) {
            throw SandboxError(message: "read_write_paths: \(missing) does not exist; create it, writable to user \(account.user)")
        }
        // Inside a private /tmp the directories above Backstop's bound state directory are
        // the sandbox's own (mode 0755); only the state directory and below are the host's.
        let bound = protectedDirectories.first { Self.isInside(contentPath, $0) }
        let top = spec.privateTmp && Self.isInPrivateTmp(contentPath) ? bound ?? "/" : "/"
        if let problem = account.cannotReach(contentPath + "/", from: top) { throw SandboxError(message: problem) }
    }

    /// Creates the placeholders below `directory` (mode 0000, owned by root).
    /// - Throws: `Errno` of mkdir(2) or open(2).
    public static func preparePlaceholders(in directory: String) throws {
        try DurableFile.makeDirectories(directory, mode: 0o755)
        for (name, isDirectory) in [("directory", true), ("file", false)] {
            let path = directory + "/" + name
            if isDirectory {
                if mkdir(path, 0) != 0, errno != EEXIST { throw Errno(rawValue: errno) }
            } else {
                let descriptor = open(path, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0)
                guard descriptor >= 0 else { throw Errno(rawValue: errno) }
                close(descriptor)
            }
            chmod(path, 0)
        }
    }

    /// Whether bubblewrap is installed; nil when it is, else what to do.
    public static var unavailableReason: String? {
        access(program, X_OK) == 0 ? nil : "bubblewrap (\(program)) is not installed; install Debian's bubblewrap package"
    }

    /// The command line that runs `arguments` in the sandbox, and the report of what it applies.
    public func plan(_ arguments: [String]) -> (arguments: [String], report: SandboxReport) {
        var report = SandboxReport(engine: "direct (bubblewrap, \(Self.program))")
        var bwrap = [Self.program, "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        var namespaces = "mount, IPC, UTS, cgroup"
        if spec.privateNetwork {
            bwrap.append("--unshare-net")
            namespaces += ", network"
            report.apply("private_network", "yes: a network namespace with only a loopback device")
        } else {
            report.apply("private_network", "no: the machine's network")
        }
        if privateProcesses {
            bwrap += ["--unshare-pid", "--as-pid-1"]
            report.apply("namespaces", namespaces + ", PID (it sees only its own processes; bash is their PID 1)")
        } else {
            report.apply("namespaces", namespaces + " (not PID: the agent sees the machine's processes)")
        }
        bwrap += mounts(command: arguments, &report)
        bwrap += ["--cap-drop", "ALL"]
        let kept = spec.capabilities
        for capability in kept + Self.setprivCapabilities.filter({ !kept.contains($0) }) { bwrap += ["--cap-add", capability] }
        bwrap += ["--die-with-parent", "--new-session", "--"]
        report.apply("capabilities", kept.isEmpty ? "none: all dropped from the bounding set" : kept.joined(separator: " ") + " kept; all others dropped from the bounding set")
        report.apply("session", "a session of its own (--new-session); "
            + (account.uid == 0 ? "killed with backstopd (--die-with-parent, kept across the group change by setpriv --pdeathsig keep)" : "if backstopd is killed, the next one kills it (the kernel drops --die-with-parent at the user change)"))
        report.apply("launcher", "bwrap runs as root in group \(Self.launcherGroupName) (gid \(Self.launcherGroupID)), which no agent shares: an agent cannot open its /proc entry, which leads to the host's file system")

        var setpriv = [Self.setpriv, "--reuid=\(account.uid)", "--regid=\(account.gid)"]
        // The group changes from the launcher's: the kernel would drop the death signal.
        if account.uid == 0 { setpriv.append("--pdeathsig=keep") }
        setpriv.append(account.hasPasswdEntry && spec.group == nil ? "--init-groups" : "--clear-groups")
        let capabilityList = (["-all"] + kept.map { "+" + $0.dropFirst(4).lowercased() }).joined(separator: ",")
        setpriv += ["--bounding-set=" + capabilityList, "--inh-caps=" + capabilityList, "--ambient-caps=" + capabilityList]
        report.apply("user", "\(account.user) (uid \(account.uid)), group \(account.group) (gid \(account.gid))")
        if spec.noNewPrivileges {
            setpriv.append("--no-new-privs")
            report.apply("no_new_privileges", "yes (PR_SET_NO_NEW_PRIVS)")
        } else {
            report.apply("no_new_privileges", "no")
        }
        setpriv.append("--")

        var limits: [String] = []
        let cgroup = " (rlimit: systemd is not running here, so there is no transient scope for cgroup limits)"
        // The agent's user cannot raise an rlimit above the hard limit it inherits: a lower one is its limit.
        func lowered(_ value: UInt64, _ resource: UInt32, unit: UInt64, _ setting: String, _ name: String) -> UInt64 {
            var limit = rlimit()
            guard getrlimit(__rlimit_resource_t(resource), &limit) == 0, limit.rlim_max != rlim_t.max,
                  value > UInt64(limit.rlim_max) / unit else { return value }
            report.skip(setting, "\(value * unit) is above the hard \(name) of \(limit.rlim_max) that backstopd passes on; that applies instead")
            return UInt64(limit.rlim_max) / unit
        }
        if let bytes = spec.memoryMaxBytes {
            if cgroupScope && memoryInScope {
                report.apply("memory_max", "\(SandboxSpec.formatBytes(bytes)) as MemoryMax= of \(Self.scopeNote): the OOM killer of that cgroup ends the agent at it, and its exit names the limit")
            } else {
                limits.append("ulimit -d \(lowered(max(1, bytes / 1024), RLIMIT_DATA.rawValue, unit: 1024, "memory_max", "RLIMIT_DATA"))")
                report.apply("memory_max", "\(SandboxSpec.formatBytes(bytes)) as RLIMIT_DATA only"
                    + (cgroupScope ? " (the transient scope cannot hold it here: no memory controller in the unified cgroup hierarchy)" : cgroup)
                    + ": an allocation past it fails inside the agent, which cannot be told from a content failure")
            }
        }
        if let tasks = spec.tasksMax {
            if account.uid != 0 {
                limits.append("ulimit -u \(lowered(UInt64(tasks), __RLIMIT_NPROC.rawValue, unit: 1, "tasks_max", "RLIMIT_NPROC"))")
                report.apply("tasks_max", "\(tasks) as RLIMIT_NPROC (it counts every process of uid \(account.uid))" + (cgroupScope ? " and TasksMax= of \(Self.scopeNote)" : cgroup))
            } else if cgroupScope {
                report.apply("tasks_max", "\(tasks) as TasksMax= of \(Self.scopeNote) (RLIMIT_NPROC does not bind root)")
            } else {
                report.skip("tasks_max", "the kernel does not enforce RLIMIT_NPROC for root, and without systemd there is no transient scope; run the agent as another user")
            }
        }
        if let percent = spec.cpuQuotaPercent {
            if cgroupScope {
                report.apply("cpu_quota", "\(percent)% as CPUQuota= of \(Self.scopeNote)")
            } else {
                report.skip("cpu_quota", "\(percent)%: no rlimit limits CPU bandwidth, and without systemd there is no transient scope for a cgroup limit")
            }
        }
        if !spec.systemCallFilter.isEmpty {
            report.skip("system_call_filter", "\(spec.systemCallFilter.joined(separator: " ")): bubblewrap takes only a compiled seccomp program; systemd's groups apply with the systemd engine")
        }
        // Set up: say so on the status pipe (bash's stdin, moved to fd 3), which the agent does
        // not inherit. As PID 1 of a preflight, bash forks before it lowers the limits:
        // RLIMIT_NPROC must not keep it from forking the agent's shell.
        let run = limits.map { $0 + " || exit 1; " }.joined()
            + "echo \(Self.readyLine) >&3; exec 3>&-; unset PWD; "
            + "[ -z \"${\(AgentEnvironment.watchdogMicrosecondsVariable)-}\" ] || export \(AgentEnvironment.watchdogPIDVariable)=$BASHPID; "
            + "exec -- \"$@\"; exit \(Self.execFailedCode)"
        let script = "shopt -s execfail; exec 3>&0 0</dev/null; " + (privateProcesses ? "(\(run)) & wait $!" : run)
        return (bwrap + setpriv + [Self.shell, "-c", script, Self.shellName] + arguments, report)
    }

    /// bwrap's mount options: read-only and writable binds from the shallowest path to the
    /// deepest (so the more specific wins), the state directory read-only on top, then the
    /// inaccessible paths masked.
    private func mounts(command: [String], _ report: inout SandboxReport) -> [String] {
        let program = command.first
        // The files the command line names (`/etc/agent.conf`, `--config=/etc/agent.conf`) that exist.
        let named = command.dropFirst().compactMap { word -> String? in
            let path = word.hasPrefix("/") ? word : word.split(separator: "=", maxSplits: 1).dropFirst().first.map(String.init)
            return path.flatMap { $0.hasPrefix("/") && Self.exists($0) ? $0 : nil }
        }
        var options: [String] = []
        report.apply("devices", "a private /dev with null, zero, full, random, urandom, tty, shm and pts")
        // Every path is mounted where its symlinks lead (bwrap would not follow one at the
        // destination, and a symlink must not carry a writable path into Backstop's directories);
        // a symlink that a private /tmp would hide is made again inside it.
        let protected = protectedDirectories.filter(Self.exists).map(Self.resolved)
        var links = zip(protectedDirectories.filter(Self.exists), protected).filter { $0 != $1 }.map { (path: $0, target: $1) }
        func real(_ path: String, _ setting: String) -> String? {
            guard Self.exists(path) else {
                report.skip(setting, "\(path): does not exist")
                return nil
            }
            return Self.resolved(path)
        }
        // The inaccessible paths, masked last (where their symlinks lead), but decided first:
        // what they hide is not bound.
        var masks: [(path: String, hidden: String, placeholder: String)] = []
        let serviceManager = spec.allowServiceManager ? [] : SandboxSpec.serviceManagerPaths
        for path in spec.inaccessiblePaths + serviceManager {
            let setting = spec.inaccessiblePaths.contains(path) ? "inaccessible_paths" : "allow_service_manager"
            var info = stat()
            guard stat(path, &info) == 0 else {
                // The service manager's sockets differ between systemd versions: the absent ones are no loss.
                if setting == "inaccessible_paths" { report.skip(setting, "\(path): does not exist") }
                continue
            }
            // Hiding what the sandbox itself runs (or the agent's program), or the content,
            // would fail every start before the agent runs, blamed on the content.
            let hidden = Self.resolved(path)
            if let needed = (Self.neededFiles + [program].compactMap { $0 }).first(where: { Self.isInside(Self.resolved($0), hidden) }) {
                report.skip(setting, "\(path): would hide \(needed), which the sandbox runs")
                continue
            }
            if let directory = protected.first(where: { Self.isInside($0, hidden) || Self.isInside(hidden, $0) }) {
                report.skip(setting, "\(path): would hide Backstop's directory \(directory) or part of it, where the agent reads its content and notify socket")
                continue
            }
            for needed in named where Self.isInside(Self.resolved(needed), hidden) {
                report.skip("exec", "\(needed) is hidden by inaccessible path \(path)")
            }
            guard !masks.contains(where: { $0.hidden == hidden }) else { continue }
            masks.append((path, hidden, placeholderDirectory + (info.st_mode & S_IFMT == S_IFDIR ? "/directory" : "/file")))
        }
        func masked(_ path: String, _ real: String, _ setting: String) -> Bool {
            guard let mask = masks.first(where: { Self.isInside(real, $0.hidden) }) else { return false }
            report.skip(setting, "\(path): hidden by inaccessible path \(mask.path)" + (real == path ? "" : " (it leads to \(real))"))
            return true
        }
        /// A mount of the host's `path` (resolved) in the sandbox; `configured` is the path as
        /// `[agent.sandbox]` gave it, nil for the implicit writable root.
        var binds: [(path: String, writable: Bool, configured: String?)] = []
        for path in spec.readOnlyPaths {
            if let real = real(path, "read_only_paths"), !masked(path, real, "read_only_paths") { binds.append((real, false, path)) }
        }
        for path in spec.readWritePaths {
            guard let real = real(path, "read_write_paths"), !masked(path, real, "read_write_paths") else { continue }
            if let directory = protected.first(where: { Self.isInside(real, $0) }) {
                report.skip("read_write_paths", "\(path): inside Backstop's directory \(directory), which agents only read")
            } else {
                binds.append((real, true, path))
            }
        }
        for bind in binds where bind.configured != bind.path {
            if let configured = bind.configured { links.append((configured, bind.path)) }
        }
        if !binds.contains(where: { $0.path == "/" }) {
            // The rest of the file system as it is, so that the program and its libraries are there.
            binds.insert(("/", true, nil), at: 0)
            report.skip("read_only_paths", SandboxSpec.writableRootNote)
        }
        binds.sort { Self.depth($0.path) < Self.depth($1.path) || (Self.depth($0.path) == Self.depth($1.path) && !$0.writable && $1.writable) }
        var tmpAdded = false
        // bwrap makes missing mount points mode 0700; inside a private /tmp they are made 0755 first.
        var made: Set<String> = []
        /// A mount at `destination`: `flag` with `source` (nil for a tmpfs).
        func bind(_ flag: String, _ source: String?, _ destination: String) {
            if spec.privateTmp {
                var ancestor = ""
                for component in destination.split(separator: "/").dropLast() {
                    ancestor += "/" + component
                    guard Self.isBelowPrivateTmp(ancestor), !made.contains(ancestor) else { continue }
                    options += ["--perms", "0755", "--dir", ancestor]
                    made.insert(ancestor)
                }
            }
            options += [flag] + (source.map { [$0] } ?? []) + [destination]
        }
        for entry in binds {
            if spec.privateTmp, !tmpAdded, Self.depth(entry.path) >= 1 {
                options += privateTmpOptions()
                tmpAdded = true
            }
            let copy = entry.configured.flatMap { substitutes[$0] }
            bind(entry.writable ? "--bind" : "--ro-bind", entry.writable ? copy ?? entry.path : entry.path, entry.path)
            if entry.path == "/" { options += ["--dev", "/dev"] + (privateProcesses ? ["--proc", "/proc"] : []) }
        }
        if spec.privateTmp && !tmpAdded { options += privateTmpOptions() }
        // The agent's program stays where it is, also when a private /tmp would hide it. What
        // else its command line names there is hidden, and said (whether the agent reads or
        // writes it is the operator's to say, in read_only_paths or read_write_paths).
        if spec.privateTmp {
            let hidden = ([program].compactMap { $0 }.filter(Self.exists) + named).filter { path in
                Self.isBelowPrivateTmp(path)
                    && !(binds.map(\.configured).compactMap { $0 }.filter { $0 != "/" } + protectedDirectories).contains { Self.isInside(path, $0) }
            }
            if let program, hidden.first == program {
                bind("--ro-bind", program, program)
                report.apply("program", "\(program) bound read-only into the private /tmp")
            }
            for path in hidden where path != program {
                report.skip("exec", "\(path) is hidden by the private /tmp; list it in read_only_paths or read_write_paths")
            }
            // Unless a mount above it already shows the host's symlink.
            for link in links where Self.isInPrivateTmp(link.path)
                && !binds.contains(where: { $0.path != "/" && $0.path != link.path && Self.isInside(link.path, $0.path) }) {
                bind("--symlink", link.target, link.path)
            }
            report.apply("private_tmp", "yes: /tmp and /var/tmp are empty tmpfs of the agent's own (mode 1777)")
            let size = SandboxSpec.formatBytes(spec.privateTmpSizeBytes)
            if Self.boundsTmpfs {
                report.apply("tmp_size", "\(size) each (tmpfs size=): a write past it fails with ENOSPC")
            } else {
                report.skip("tmp_size", "\(Self.program) is older than bubblewrap 0.5 and has no --size, so the private /tmp is bounded only by the agent's memory_max (a cgroup's)")
            }
        }
        func shown(_ entry: (path: String, writable: Bool, configured: String?)) -> String {
            let name = entry.configured.map { $0 == entry.path ? $0 : "\($0) (at \(entry.path))" } ?? entry.path
            return entry.writable && entry.configured.flatMap({ substitutes[$0] }) != nil ? name + " (a private copy)" : name
        }
        let readOnly = binds.filter { bind in !bind.writable && !binds.contains { $0.writable && $0.path == bind.path } }.map(shown)
        let writable = binds.filter { $0.writable && $0.configured != nil }.map(shown)
        report.apply("read_only_paths", readOnly.isEmpty ? "none" : readOnly.joined(separator: " "))
        report.apply("read_write_paths", writable.isEmpty ? "none" : writable.joined(separator: " "))
        let runtime = runtimeDirectory.flatMap { Self.exists($0) ? Self.resolved($0) : nil }
        for directory in protected {
            if directory == runtime {
                options += ["--perms", "0755"]
                bind("--tmpfs", nil, directory)
            } else {
                bind("--ro-bind", directory, directory)
            }
        }
        report.apply("Backstop's directories", protectedDirectories.map { $0 == runtimeDirectory ? "\($0) hidden (an empty tmpfs: no control socket)" : "\($0) read-only" }.joined(separator: ", ") + " (always)")
        if let directory = notifyDirectory, Self.exists(directory) {
            let real = Self.resolved(directory)
            options += ["--perms", "0755", "--tmpfs", real]
            if let socket = notifySocket {
                options += ["--ro-bind", socket, real + "/" + (socket.split(separator: "/").last.map(String.init) ?? "")]
            }
            report.apply("notify socket", "\(directory) holds only the run's own socket (\(notifySocket ?? "none")); no other agent's is reachable")
            options += ["--remount-ro", real]
        }
        // Read-only once made: a root agent could otherwise fill the tmpfs (memory).
        if let runtime { options += ["--remount-ro", runtime] }
        if let overlay = contentOverlay { bind("--ro-bind", overlay.candidate, overlay.linkTarget) }
        for mask in masks { bind("--ro-bind", mask.placeholder, mask.hidden) }
        let inaccessible = masks.filter { spec.inaccessiblePaths.contains($0.path) }.map(\.path)
        report.apply("inaccessible_paths", inaccessible.isEmpty ? "none" : inaccessible.joined(separator: " ") + " (replaced by mode-0000 placeholders)")
        let managerHidden = masks.filter { serviceManager.contains($0.path) && !inaccessible.contains($0.path) }.map(\.path)
        if spec.allowServiceManager {
            report.apply("allow_service_manager", "yes: systemd's sockets and the system D-Bus stay reachable (as root, the agent can start processes outside this sandbox)")
        } else {
            report.apply("allow_service_manager", "no: " + (managerHidden.isEmpty ? "none of \(serviceManager.joined(separator: " ")) is here" : managerHidden.joined(separator: " ") + " hidden (mode-0000 placeholders): systemctl, systemd-run and D-Bus clients cannot reach systemd"))
        }
        return options
    }

    /// The directories a private /tmp replaces.
    static let privateTmpDirectories = ["/tmp", "/var/tmp"]

    /// Whether `path` is one of ``privateTmpDirectories`` or below one.
    static func isInPrivateTmp(_ path: String) -> Bool { privateTmpDirectories.contains { isInside(path, $0) } }

    /// Whether `path` is below one of ``privateTmpDirectories`` (not one itself).
    static func isBelowPrivateTmp(_ path: String) -> Bool { isInPrivateTmp(path) && !privateTmpDirectories.contains(path) }

    /// Empty tmpfs on /tmp and /var/tmp (when there is one), mode 1777 like any /tmp (and
    /// systemd's PrivateTmp=): an agent that is not root makes its temporary files there too.
    /// Each is at most `tmp_size` bytes (tmpfs size=), so that an agent's temporary files
    /// cannot take the host's memory (a tmpfs is RAM and swap).
    private func privateTmpOptions() -> [String] {
        let size = Self.boundsTmpfs ? ["--size", String(spec.privateTmpSizeBytes)] : []
        return Self.privateTmpDirectories.filter { $0 == "/tmp" || Self.exists($0) }.flatMap { ["--perms", "1777"] + size + ["--tmpfs", $0] }
    }

    /// Whether this bwrap takes `--size` before `--tmpfs` (bubblewrap 0.5 and later), as its `--help` says.
    static let boundsTmpfs: Bool = {
        guard unavailableReason == nil else { return false }
        let process = Process()
        let output = Pipe()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = ["--help"]
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        let help = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: help, as: UTF8.self).contains("--size")
    }()

    static func exists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0
    }

    /// The programs run inside the sandbox before the agent's own.
    static let sandboxPrograms = [setpriv, shell]

    /// The sandbox programs and the shared objects they load (ld.so(8), as ldd(1) lists them
    /// for these two trusted system programs), which no inaccessible path may cover.
    static let neededFiles: [String] = {
        var files = sandboxPrograms + ["/etc/ld.so.cache"]
        for program in sandboxPrograms {
            let process = Process()
            let output = Pipe()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/ldd")
            process.arguments = [program]
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            guard (try? process.run()) != nil else { continue }
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            for line in text.split(separator: "\n") {
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
                if let path = line.split(separator: " ").first(where: { $0.hasPrefix("/") }) { files.append(String(path)) }
            }
        }
        return files
    }()

    /// `path` with its symlinks resolved (realpath(3)), or as given when that fails.
    static func resolved(_ path: String) -> String {
        guard let real = realpath(path, nil) else { return path }
        defer { free(real) }
        return String(cString: real)
    }

    static func depth(_ path: String) -> Int { path.split(separator: "/").count }

    static func isInside(_ path: String, _ directory: String) -> Bool {
        path == directory || path.hasPrefix(directory.hasSuffix("/") ? directory : directory + "/")
    }
}
