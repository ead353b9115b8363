import Foundation
import Testing
@testable import BackstopCore

@Suite("Sandbox: what each engine makes of [agent.sandbox]")
struct SandboxPlanTests {
    static let nobody = SandboxAccount(user: "nobody", uid: 65534, group: "nogroup", gid: 65534, hasPasswdEntry: true)

    /// Stands for Backstop's state directory (the plan binds only what exists); each test removes it.
    let state: String

    init() throws {
        state = try makeTemporaryDirectory()
        try FileManager.default.createDirectory(atPath: state + "/demo", withIntermediateDirectories: true)
    }

    func bubblewrap(_ spec: SandboxSpec, account: SandboxAccount = nobody) -> BubblewrapSandbox {
        var sandbox = BubblewrapSandbox(
            spec: spec, account: account, protectedDirectories: [state, "/run/backstop"],
            placeholderDirectory: "/run/backstop/inaccessible")
        sandbox.cgroupScope = false
        return sandbox
    }

    @Test("bubblewrap: the notify directory is an empty tmpfs over Backstop's runtime directory, holding only the run's own socket")
    func notifySocketAlone() throws {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var sandbox = bubblewrap(SandboxSpec())
        sandbox.protectedDirectories = [state]
        sandbox.notifyDirectory = state + "/demo"
        sandbox.notifySocket = state + "/demo/agent"
        let (arguments, report) = sandbox.plan(["/usr/bin/agent"])
        let runtime = try #require(position(["--ro-bind", state, state], in: arguments))
        let tmpfs = try #require(position(["--tmpfs", state + "/demo"], in: arguments))
        let socket = try #require(position(["--ro-bind", state + "/demo/agent", state + "/demo/agent"], in: arguments))
        #expect(runtime < tmpfs && tmpfs < socket)
        #expect(report.applied.contains { $0.setting == "notify socket" })
        sandbox.notifySocket = nil
        #expect(position(["--tmpfs", state + "/demo"], in: sandbox.plan(["/usr/bin/agent"]).arguments) != nil, "a check gets none")
        #expect(!sandbox.plan(["/usr/bin/agent"]).arguments.contains(state + "/demo/agent"))
    }

    @Test("bubblewrap: memory_max is the transient scope's MemoryMax= alone where there is one, else RLIMIT_DATA")
    func memoryMaxWhereHeld() throws {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var spec = SandboxSpec()
        spec.memoryMaxBytes = 64 << 20
        var sandbox = bubblewrap(spec)
        let (rlimit, rlimitReport) = sandbox.plan(["/usr/bin/agent"])
        #expect(rlimit.contains { $0.contains("ulimit -d 65536") })
        #expect(rlimitReport.applied.contains { $0.setting == "memory_max" && $0.detail.hasPrefix("64M as RLIMIT_DATA only") })
        sandbox.cgroupScope = true
        sandbox.memoryInScope = false
        #expect(sandbox.plan(["/usr/bin/agent"]).arguments.contains { $0.contains("ulimit -d 65536") }, "a scope without the memory controller cannot hold it")
        sandbox.memoryInScope = true
        let (scope, scopeReport) = sandbox.plan(["/usr/bin/agent"])
        #expect(!scope.contains { $0.contains("ulimit -d") })
        #expect(scopeReport.applied.contains { $0.setting == "memory_max" && $0.detail.hasPrefix("64M as MemoryMax= of the transient scope") })
    }

    @Test("bubblewrap: the private /tmp and /var/tmp are each a tmpfs of tmp_size bytes; the systemd engine says PrivateTmp= is not bounded by it")
    func tmpSizeBounded() throws {
        defer { try? FileManager.default.removeItem(atPath: state) }
        try #require(BubblewrapSandbox.boundsTmpfs, "this machine's bwrap takes --size (bubblewrap 0.5 and later; Debian 12 has 0.8)")
        var spec = SandboxSpec()
        spec.tmpSizeBytes = 64 << 20
        let (arguments, report) = bubblewrap(spec).plan(["/usr/bin/agent"])
        #expect(position(["--size", String(64 << 20), "--tmpfs", "/tmp"], in: arguments) != nil)
        #expect(position(["--size", String(64 << 20), "--tmpfs", "/var/tmp"], in: arguments) != nil)
        #expect(report.applied.contains { $0.setting == "tmp_size" && $0.detail.hasPrefix("64M each") })
        spec.tmpSizeBytes = nil
        spec.memoryMaxBytes = 512 << 20
        #expect(position(["--size", String(128 << 20), "--tmpfs", "/tmp"], in: bubblewrap(spec).plan(["/usr/bin/agent"]).arguments) != nil)
        let unit = UnitSandbox(spec: spec, unit: "backstop-demo.service", stateDirectory: state, runtimeDirectory: "/run/backstop", isTransient: true).settings().report
        #expect(unit.notApplied.isEmpty && unit.applied.contains { $0.setting == "private_tmp" && $0.detail.contains("not by tmp_size") })
        spec.tmpSizeBytes = 64 << 20
        let bounded = UnitSandbox(spec: spec, unit: "backstop-demo.service", stateDirectory: state, runtimeDirectory: "/run/backstop", isTransient: true).settings().report
        #expect(bounded.notApplied.contains { $0.setting == "tmp_size" && $0.detail.hasPrefix("64M: PrivateTmp=") })
    }

    /// The index of the first occurrence of `words` in order in `arguments`.
    func position(_ words: [String], in arguments: [String]) -> Int? {
        guard arguments.count >= words.count else { return nil }
        return (0...(arguments.count - words.count)).first { Array(arguments[$0..<$0 + words.count]) == words }
    }

    @Test("bubblewrap: / read-only first, writable paths over it, Backstop's directories read-only on top, hidden paths last; the agent's command at the end")
    func bindOrder() throws {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var spec = SandboxSpec()
        spec.readWritePaths = ["/var/tmp", state + "/demo"]
        spec.inaccessiblePaths = ["/root", "/no/such/path"]
        let (arguments, report) = bubblewrap(spec).plan(["/usr/bin/agent", "--content", "/c"])
        let root = try #require(position(["--ro-bind", "/", "/"], in: arguments))
        let stateBind = try #require(position(["--ro-bind", state, state], in: arguments))
        let hidden = try #require(position(["--ro-bind", "/run/backstop/inaccessible/directory", "/root"], in: arguments))
        #expect(root < stateBind && stateBind < hidden)
        #expect(position(["--unshare-net"], in: arguments) != nil && position(["--cap-drop", "ALL"], in: arguments) != nil)
        #expect(arguments.suffix(3) == ["/usr/bin/agent", "--content", "/c"])
        #expect(arguments.contains("--reuid=65534") && arguments.contains("--no-new-privs") && arguments.contains("--bounding-set=-all"))
        #expect(report.notApplied.contains { $0.setting == "read_write_paths" && $0.detail.contains(state + "/demo: inside Backstop's directory") })
        #expect(report.notApplied.contains { $0.setting == "inaccessible_paths" && $0.detail.contains("/no/such/path: does not exist") })
        #expect(report.notApplied.contains { $0.setting == "system_call_filter" })
    }

    @Test("bubblewrap: paths are mounted where their symlinks lead: a writable symlink into Backstop's directory is refused, one elsewhere is bound at its target and made again in the private /tmp; an inaccessible path over Backstop's directory is skipped")
    func symlinkedPaths() throws {
        let elsewhere = try makeTemporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: state)
            try? FileManager.default.removeItem(atPath: elsewhere)
        }
        try FileManager.default.createDirectory(atPath: elsewhere + "/real", withIntermediateDirectories: true)
        #expect(symlink(state + "/demo", elsewhere + "/store") == 0 && symlink(elsewhere + "/real", elsewhere + "/data") == 0)
        var spec = SandboxSpec()
        spec.readWritePaths = [elsewhere + "/store", elsewhere + "/data"]
        spec.inaccessiblePaths = [state, state + "/demo"]
        let (arguments, report) = bubblewrap(spec).plan(["/usr/bin/agent"])
        #expect(report.notApplied.contains { $0.setting == "read_write_paths" && $0.detail.contains(elsewhere + "/store: inside Backstop's directory") })
        #expect(!arguments.contains(elsewhere + "/store") && !arguments.contains(state + "/demo"), "no writable bind reaches the store: \(arguments)")
        #expect(position(["--bind", elsewhere + "/real", elsewhere + "/real"], in: arguments) != nil)
        #expect(position(["--symlink", elsewhere + "/real", elsewhere + "/data"], in: arguments) != nil, "the private /tmp hides the host's symlink")
        #expect(report.notApplied.filter { $0.setting == "inaccessible_paths" && $0.detail.contains("would hide Backstop's directory \(state)") }.count == 2)
        #expect(position(["--ro-bind", state, state], in: arguments) != nil)
    }

    @Test("bubblewrap: a tasks_max above the hard RLIMIT_NPROC backstopd passes on is lowered to it and said so, rather than a ulimit that fails every start")
    func tasksMaxAboveTheHardLimit() throws {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var limit = rlimit()
        #expect(getrlimit(__rlimit_resource_t(__RLIMIT_NPROC.rawValue), &limit) == 0)
        try #require(limit.rlim_max != rlim_t.max, "Linux gives every process a finite hard RLIMIT_NPROC")
        var spec = SandboxSpec()
        spec.tasksMax = Int(limit.rlim_max) + 1000
        let (arguments, report) = bubblewrap(spec).plan(["/usr/bin/agent"])
        #expect(arguments.contains { $0.contains("ulimit -u \(limit.rlim_max) ") }, "\(arguments)")
        #expect(report.notApplied.contains { $0.setting == "tasks_max" && $0.detail.contains("above the hard RLIMIT_NPROC of \(limit.rlim_max)") })
    }

    @Test("bubblewrap: what the command line names in /tmp (a file, a directory) is hidden by the private /tmp and said so; an inaccessible path over a named file stays, and is said too")
    func commandLineFilesInHiddenPlaces() throws {
        let elsewhere = try makeTemporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: state)
            try? FileManager.default.removeItem(atPath: elsewhere)
        }
        try FileManager.default.createDirectory(atPath: elsewhere + "/work", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(elsewhere)/secret", withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: elsewhere + "/agent.conf", contents: Data()))
        #expect(FileManager.default.createFile(atPath: elsewhere + "/secret/key", contents: Data()))
        var spec = SandboxSpec()
        spec.inaccessiblePaths = ["/root", elsewhere + "/secret"]
        let (arguments, report) = bubblewrap(spec).plan(
            ["/usr/bin/agent", "--config=\(elsewhere)/agent.conf", elsewhere + "/work", "--tmp", "/tmp", "--key", elsewhere + "/secret/key"])
        #expect(!arguments.contains(elsewhere + "/agent.conf") && position(["--ro-bind", "/tmp", "/tmp"], in: arguments) == nil, "\(arguments)")
        for named in ["agent.conf", "work"] {
            #expect(report.notApplied.contains { $0.setting == "exec" && $0.detail.contains("\(elsewhere)/\(named) is hidden by the private /tmp") })
        }
        #expect(report.notApplied.contains { $0.setting == "exec" && $0.detail.contains("\(elsewhere)/secret/key is hidden by inaccessible path \(elsewhere)/secret") })
        #expect(position(["--ro-bind", "/run/backstop/inaccessible/directory", elsewhere + "/secret"], in: arguments) != nil, "the mask stays")
    }

    @Test("Both engines: read_only_paths without / leaves the rest of the file system writable, and the report says so")
    func writableRootIsReported() {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var spec = SandboxSpec()
        spec.readOnlyPaths = ["/usr"]
        let (arguments, report) = bubblewrap(spec).plan(["/usr/bin/agent"])
        #expect(position(["--bind", "/", "/"], in: arguments) != nil && position(["--ro-bind", "/usr", "/usr"], in: arguments) != nil)
        let unit = UnitSandbox(spec: spec, unit: "agent.service", stateDirectory: state, runtimeDirectory: "/run/backstop").settings()
        for notApplied in [report.notApplied, unit.report.notApplied] {
            #expect(notApplied.contains { $0.setting == "read_only_paths" && $0.detail.contains("the rest of the file system is writable") })
        }
        #expect(!unit.settings.contains { $0.key == "ProtectSystem" })
    }

    @Test("bubblewrap: a read-only or writable path that an inaccessible path hides through a symlink is not bound, and said so")
    func pathsHiddenThroughSymlinks() throws {
        let elsewhere = try makeTemporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: state)
            try? FileManager.default.removeItem(atPath: elsewhere)
        }
        try FileManager.default.createDirectory(atPath: elsewhere + "/secret/w", withIntermediateDirectories: true)
        #expect(symlink(elsewhere + "/secret/w", elsewhere + "/to-secret") == 0 && symlink(elsewhere + "/secret", elsewhere + "/hide") == 0)
        var spec = SandboxSpec()
        spec.readWritePaths = [elsewhere + "/to-secret"]
        spec.inaccessiblePaths = [elsewhere + "/hide"]
        let (arguments, report) = bubblewrap(spec).plan(["/usr/bin/agent"])
        #expect(!arguments.contains(elsewhere + "/secret/w"), "\(arguments)")
        #expect(report.notApplied.contains {
            $0.setting == "read_write_paths" && $0.detail == "\(elsewhere)/to-secret: hidden by inaccessible path \(elsewhere)/hide (it leads to \(elsewhere)/secret/w)"
        }, "\(report.notApplied)")
        #expect(position(["--ro-bind", "/run/backstop/inaccessible/directory", elsewhere + "/secret"], in: arguments) != nil)
    }

    @Test("bubblewrap: an inaccessible path that would hide setpriv or bash is skipped, not a start that fails on the content")
    func sandboxProgramsStayVisible() {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var spec = SandboxSpec()
        let libc = BubblewrapSandbox.neededFiles.first { $0.contains("/libc.so") }
        let libraries = libc.map { ($0 as NSString).deletingLastPathComponent }
        #expect(libraries != nil, "ldd lists bash's libc")
        spec.inaccessiblePaths = ["/usr/bin", "/"] + (libraries.map { [$0] } ?? []) + ["/usr/share/doc"]
        let (arguments, report) = bubblewrap(spec).plan(["/bin/true"])
        #expect(report.notApplied.filter { $0.setting == "inaccessible_paths" && $0.detail.contains("which the sandbox runs") }.count == spec.inaccessiblePaths.count - 1)
        #expect(position(["--ro-bind", "/run/backstop/inaccessible/directory", "/usr/share/doc"], in: arguments) != nil, "what the sandbox does not need is hidden")
    }

    @Test("bubblewrap: kept capabilities stay in every set; root's tasks_max is not applied without systemd, and the report says why")
    func capabilitiesAndRoot() {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var spec = SandboxSpec()
        spec.capabilities = ["CAP_NET_ADMIN"]
        let root = SandboxAccount(user: "root", uid: 0, group: "root", gid: 0, hasPasswdEntry: true)
        let (arguments, report) = bubblewrap(spec, account: root).plan(["/bin/true"])
        #expect(position(["--cap-add", "CAP_NET_ADMIN"], in: arguments) != nil)
        #expect(arguments.contains("--ambient-caps=-all,+net_admin"))
        #expect(report.notApplied.contains { $0.setting == "tasks_max" && $0.detail.contains("RLIMIT_NPROC for root") })
    }

    @Test("systemd: the drop-in and the transient unit's properties say the same, in their own forms")
    func unitForms() throws {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var spec = SandboxSpec()
        spec.capabilities = ["CAP_NET_RAW", "CAP_CHOWN"]
        spec.cpuQuotaPercent = 50
        spec.memoryMaxBytes = 512 << 20
        spec.tasksMax = nil
        spec.systemCallFilter = ["@system-service", "~@privileged"]
        spec.readWritePaths = ["/var/lib/agent"]
        let unit = UnitSandbox(spec: spec, unit: "x.service", stateDirectory: "/var/lib/backstop", runtimeDirectory: "/run/backstop")
        let dropIn = unit.dropIn()
        for line in ["CapabilityBoundingSet=CAP_NET_RAW CAP_CHOWN", "ProtectSystem=strict", "ProtectHome=yes", "CPUQuota=50%",
                     "MemoryMax=512M", "TasksMax=infinity", "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged",
                     "ReadWritePaths=\"-/var/lib/agent\"", "ReadOnlyPaths=\"-/var/lib/backstop\"", "User=nobody"] {
            #expect(dropIn.contains("\n" + line + "\n"), "\(line)")
        }
        let properties = unit.busProperties()
        func values(_ key: String) -> [BusValue] { properties.filter { $0.0 == key }.map(\.1) }
        #expect(values("CapabilityBoundingSet") == [.uint64(1 << 13 | 1 << 0)])
        #expect(values("CPUQuotaPerSecUSec") == [.uint64(500_000)])
        #expect(values("MemoryMax") == [.uint64(512 << 20)])
        #expect(values("TasksMax") == [.uint64(.max)])
        #expect(values("SystemCallFilter") == [.list(allow: true, ["@system-service"]), .list(allow: false, ["@privileged"])])
        #expect(values("ReadWritePaths") == [.strings(["-/var/lib/agent"])])
        #expect(values("RestrictNamespaces") == [.uint64(0)])
        #expect(values("SystemCallErrorNumber") == [.int32(EPERM)])
        #expect(UnitSandbox.cgroupProperties(unit.spec).map(\.0) == ["MemoryMax", "CPUQuotaPerSecUSec", "TasksMax"])
    }

    @Test("bubblewrap: Backstop's runtime directory is an empty tmpfs holding only the notify directory, and the service manager's sockets are masked for every user, root included, unless allow_service_manager")
    func runtimeDirectoryAndServiceManagerHidden() throws {
        let runtime = try makeTemporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: state)
            try? FileManager.default.removeItem(atPath: runtime)
        }
        try FileManager.default.createDirectory(atPath: runtime + "/notify", withIntermediateDirectories: true)
        // Stands for /run/systemd/private: a path that exists whatever runs this test.
        let root = SandboxAccount(user: "root", uid: 0, group: "root", gid: 0, hasPasswdEntry: true)
        var sandbox = BubblewrapSandbox(
            spec: SandboxSpec(), account: root, protectedDirectories: [state, runtime], placeholderDirectory: runtime + "/inaccessible")
        sandbox.cgroupScope = false
        sandbox.runtimeDirectory = runtime
        sandbox.notifyDirectory = runtime + "/notify"
        sandbox.notifySocket = runtime + "/notify/demo"
        let (arguments, report) = sandbox.plan(["/usr/bin/agent"])
        #expect(position(["--ro-bind", runtime, runtime], in: arguments) == nil, "the runtime directory is not bound: \(arguments)")
        let hidden = try #require(position(["--perms", "0755", "--tmpfs", runtime], in: arguments))
        let notify = try #require(position(["--tmpfs", runtime + "/notify"], in: arguments))
        let socket = try #require(position(["--ro-bind", runtime + "/notify/demo", runtime + "/notify/demo"], in: arguments))
        #expect(position(["--ro-bind", state, state], in: arguments) != nil, "the state directory stays read-only")
        let notifyReadOnly = try #require(position(["--remount-ro", runtime + "/notify"], in: arguments))
        let runtimeReadOnly = try #require(position(["--remount-ro", runtime], in: arguments))
        #expect(hidden < notify && notify < socket && socket < notifyReadOnly && notifyReadOnly < runtimeReadOnly, "both tmpfs are read-only once made: \(arguments)")
        #expect(report.applied.contains { $0.setting == "Backstop's directories" && $0.detail.contains("\(runtime) hidden") })

        let present = SandboxSpec.serviceManagerPaths.filter(BubblewrapSandbox.exists).map(BubblewrapSandbox.resolved)
        let line = try #require(report.applied.first { $0.setting == "allow_service_manager" })
        #expect(line.detail.hasPrefix("no: "))
        for path in Set(present) {
            let placeholder = runtime + "/inaccessible/" + (FileManager.default.fileExists(atPath: path + "/.") ? "directory" : "file")
            #expect(position(["--ro-bind", placeholder, path], in: arguments) != nil, "\(path) is masked: \(arguments)")
            #expect(line.detail.contains(path), "\(line.detail)")
        }
        #expect(!report.notApplied.contains { $0.setting == "allow_service_manager" || $0.detail.contains("/run/systemd/io.systemd.Manager") },
                "the sockets this systemd lacks are no loss: \(report.notApplied)")

        sandbox.spec.allowServiceManager = true
        let (allowed, allowedReport) = sandbox.plan(["/usr/bin/agent"])
        for path in present { #expect(!allowed.contains(path), "\(path) stays reachable when allowed") }
        #expect(allowedReport.applied.contains { $0.setting == "allow_service_manager" && $0.detail.hasPrefix("yes") })
    }

    @Test("systemd: Backstop's runtime directory and the service manager's sockets are inaccessible unless allow_service_manager; / read-only names /run too, unless it is writable")
    func unitHidesRuntimeAndServiceManager() throws {
        defer { try? FileManager.default.removeItem(atPath: state) }
        var spec = SandboxSpec()
        spec.user = "root"
        let unit = UnitSandbox(spec: spec, unit: "x.service", stateDirectory: "/var/lib/backstop", runtimeDirectory: "/run/backstop")
        let dropIn = unit.dropIn()
        let manager = SandboxSpec.serviceManagerPaths.map { UnitFileSyntax.quoted("-" + $0) }.joined(separator: " ")
        for line in ["InaccessiblePaths=\"-/run/backstop\"", "InaccessiblePaths=" + manager, "ReadOnlyPaths=\"-/run\"", "ProtectSystem=strict"] {
            #expect(dropIn.contains("\n" + line + "\n"), "\(line) in \(dropIn)")
        }
        #expect(SandboxSpec.serviceManagerPaths.contains("/run/systemd/private") && SandboxSpec.serviceManagerPaths.contains("/run/dbus"))
        let values = unit.busProperties().filter { $0.0 == "InaccessiblePaths" }.map(\.1)
        #expect(values.contains(.strings(["-/run/backstop"])) && values.contains(.strings(SandboxSpec.serviceManagerPaths.map { "-" + $0 })))
        let report = unit.settings().report
        #expect(report.applied.contains { $0.setting == "allow_service_manager" && $0.detail.hasPrefix("no: InaccessiblePaths=/run/systemd/private") })
        #expect(report.applied.contains { $0.setting == "runtime directory" && $0.detail.hasPrefix("InaccessiblePaths=/run/backstop") })

        spec.allowServiceManager = true
        spec.readWritePaths = ["/run"]
        let allowed = UnitSandbox(spec: spec, unit: "x.service", stateDirectory: "/var/lib/backstop", runtimeDirectory: "/run/backstop")
        #expect(!allowed.dropIn().contains("/run/systemd/private") && allowed.dropIn().contains("InaccessiblePaths=\"-/run/backstop\"\n"))
        #expect(!allowed.dropIn().contains("ReadOnlyPaths=\"-/run\""), "a writable /run is not made read-only again")
        #expect(allowed.dropIn().contains("\nProtectHome=yes\n"))

        spec.readWritePaths = []
        spec.inaccessiblePaths = ["/root"]
        let homesShown = UnitSandbox(spec: spec, unit: "x.service", stateDirectory: "/var/lib/backstop", runtimeDirectory: "/run/backstop").dropIn()
        #expect(homesShown.contains("\nReadOnlyPaths=\"-/run\" \"-/home\" \"-/run/user\"\n") && homesShown.contains("\nInaccessiblePaths=\"-/root\"\n"),
                "ProtectSystem=strict leaves the home directories that are not hidden to ProtectHome=, so they are named: \(homesShown)")
        #expect(!homesShown.contains("ProtectHome"))
        #expect(allowed.settings().report.applied.contains { $0.setting == "allow_service_manager" && $0.detail.hasPrefix("yes") })
    }
}
