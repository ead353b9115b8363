import CLinux
import Foundation
import SystemPackage

/// What to run for one agent start.
public struct LaunchRequest: Sendable, Equatable {
    /// The `SYSLOG_IDENTIFIER` of the agent's output in the journal: its name.
    public var identifier: String
    /// Program and arguments, `{content}` already replaced.
    public var arguments: [String]
    /// The process's whole environment (nothing else of the daemon's is passed on);
    /// ``make(agent:exec:environment:store:contentPath:version:notifySocket:watchdogSeconds:)``
    /// builds it with ``AgentEnvironment``.
    public var environment: [String: String]
    /// Whether stdout goes to /dev/null instead of the journal (probes: `PONG` every
    /// few seconds is noise; their stderr still reaches the journal).
    public var discardsStandardOutput = false
    /// The sandbox the process runs in; nil for none (probes).
    public var sandbox: BubblewrapSandbox?

    /// A request as given; ``make(agent:exec:environment:store:contentPath:version:notifySocket:watchdogSeconds:)`` builds the usual one.
    public init(identifier: String, arguments: [String], environment: [String: String]) {
        self.identifier = identifier
        self.arguments = arguments
        self.environment = environment
    }

    /// The environment variable that marks every process of an agent with its store,
    /// so that a restarted daemon finds what a killed one left behind.
    public static let storeVariable = "BACKSTOP_STORE"

    /// The same mark for the processes of the agent's probes, kept apart from the
    /// agent's so that what a probe leaves is never taken for the agent's.
    public static let probeStoreVariable = "BACKSTOP_PROBE_STORE"

    /// The same mark for a preflight instance and what it starts: never the live agent's,
    /// and killed by the next backstopd when one was killed during a preflight.
    public static let preflightStoreVariable = "BACKSTOP_PREFLIGHT_STORE"

    /// The request for `exec` on a content version: `{content}` replaced by the
    /// version's path, and the environment of ``AgentEnvironment/variables(configured:daemon:)``
    /// with Backstop's own on top: `BACKSTOP_CONTENT`, `BACKSTOP_CONTENT_VERSION`,
    /// `BACKSTOP_STORE`, `NOTIFY_SOCKET` and, with a watchdog, `WATCHDOG_USEC`
    /// (sd_watchdog_enabled(3); the sandbox adds `WATCHDOG_PID`, the agent's own pid).
    /// - Parameter environment: the agent's `environment` key, by name.
    public static func make(
        agent: String, exec: [String], environment configured: [String: String], store: String, contentPath: String,
        version: String, notifySocket: String?, watchdogSeconds: Int
    ) -> LaunchRequest {
        var environment = AgentEnvironment.variables(configured: configured)
        environment["BACKSTOP_CONTENT"] = contentPath
        environment["BACKSTOP_CONTENT_VERSION"] = version
        environment[storeVariable] = store
        if let notifySocket { environment["NOTIFY_SOCKET"] = notifySocket }
        if watchdogSeconds > 0 { environment[AgentEnvironment.watchdogMicrosecondsVariable] = String(watchdogSeconds * 1_000_000) }
        return LaunchRequest(
            identifier: agent,
            arguments: exec.map { $0.replacingOccurrences(of: "{content}", with: contentPath) },
            environment: environment)
    }
}

/// The environment an agent's processes start with (the live agent, its safe mode, its
/// preflight instance and its probes), built afresh for each run: nothing of backstopd's
/// own environment reaches them but `PATH` and the locale (`LANG`, `LC_*`), so none of
/// what systemd gives backstopd as a service (systemd.exec(5), "Environment Variables in
/// Spawned Processes": `NOTIFY_SOCKET`, `WATCHDOG_PID`/`WATCHDOG_USEC`, `LISTEN_*`,
/// `INVOCATION_ID`, `JOURNAL_STREAM`, the `*_DIRECTORY` variables, `MAINPID`, ...) makes an
/// agent take backstopd's watchdog, sockets or directories for its own.
public enum AgentEnvironment {
    /// `PATH` when backstopd has none: systemd's default for system services.
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    /// `LANG` when backstopd has no locale variable at all.
    public static let defaultLanguage = "C.UTF-8"
    /// sd_watchdog_enabled(3)'s interval variable, set when `watchdog_sec` is.
    public static let watchdogMicrosecondsVariable = "WATCHDOG_USEC"
    /// sd_watchdog_enabled(3)'s pid variable: the sandbox sets it to the agent's own pid.
    public static let watchdogPIDVariable = "WATCHDOG_PID"

    /// Variables the sandbox's bash reads or sets itself (bash(1), "Shell Variables"): set
    /// from outside, they would change what it runs (`BASH_ENV`, `SHELLOPTS`) or be replaced.
    static let shellVariables: Set<String> = ["BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "BASH_XTRACEFD", "PWD", "OLDPWD", "SHLVL", "_"]

    /// The longest `KEY=value` the kernel passes to a program (MAX_ARG_STRLEN, execve(2)).
    public static let maximumAssignmentBytes = 131_071

    /// Why the `environment` key may not set `name`, nil when it may: Backstop's own
    /// variables (`BACKSTOP_*`, `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`) are set for
    /// each run, and the sandbox shell's (``shellVariables``) belong to it.
    public static func reservation(of name: String) -> String? {
        if name.hasPrefix("BACKSTOP_") || ["NOTIFY_SOCKET", watchdogMicrosecondsVariable, watchdogPIDVariable].contains(name) {
            return "is set by Backstop itself for each run (BACKSTOP_*, NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID)"
        }
        if shellVariables.contains(name) {
            return "is read or set by the sandbox's shell (\(shellVariables.sorted().joined(separator: ", ")))"
        }
        return nil
    }

    /// Whether `name` may name an environment variable here: a letter or `_`, then letters, digits and `_`.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { $0 == "_" || ("A"..."Z").contains($0) || ("a"..."z").contains($0) || ("0"..."9").contains($0) }
    }

    /// `PATH` and the locale from `daemon` (systemd's defaults for what it lacks), then the
    /// agent's `environment` (`configured`) over them, as systemd's `Environment=` would.
    public static func variables(
        configured: [String: String], daemon: [String: String] = ProcessInfo.processInfo.environment
    ) -> [String: String] {
        var variables = daemon.filter { $0.key == "PATH" || $0.key == "LANG" || $0.key.hasPrefix("LC_") }
        if variables["PATH"] == nil { variables["PATH"] = defaultPath }
        if variables.count == 1 { variables["LANG"] = defaultLanguage }
        return variables.merging(configured) { $1 }
    }
}

/// Runs agent processes directly, without systemd, through ``Spawner``.
///
/// Each agent gets a session of its own (setsid(2)), so that its whole process
/// group can be signalled; its end is read from its pidfd by ``ProcessExits`` (one
/// epoll thread for every process, no polling). The agent's stdout and stderr go to the journal under its
/// own identifier (sd_journal_stream_fd(3)), or are the daemon's when no journald listens.
///
/// A sandboxed process (``LaunchRequest/sandbox``) is bwrap's child: bwrap's
/// `--json-status-fd` (on a copy of bwrap's stdin, a pipe here) names it, and that pid is the
/// one reported, signalled (its own session, `--new-session`) and whose exit status is
/// read from a pidfd; bwrap's own exit (the child's code, or 128 + its signal) is the
/// fallback when the kernel cannot tell.
public enum DirectRunner {
    /// Starts `request` and waits for the process to end.
    /// - Parameters:
    ///   - errorTail: when given, stderr reaches its destination through it, and it holds the
    ///     end of what the process wrote there, up to its exit, when this returns.
    ///   - started: called with the pid once the process exists.
    /// - Returns: how it ended, or the reason it could not be started.
    public static func run(
        _ request: LaunchRequest, errorTail: OutputTail? = nil, started: @Sendable (Int32) async -> Void
    ) async -> Result<Termination, LaunchError> {
        await run(request, errorTail: errorTail, deadline: nil, started: started)
    }

    /// ``run(_:errorTail:started:)``, and with a `deadline` the process's session is killed
    /// (SIGKILL) when it has not ended within the deadline's time from its start.
    private static func run(
        _ request: LaunchRequest, errorTail: OutputTail?, deadline: ProbeDeadline?, started: @Sendable (Int32) async -> Void
    ) async -> Result<Termination, LaunchError> {
        defer { errorTail?.settle() }
        guard let program = request.arguments.first else { return .failure(LaunchError(message: "empty command line")) }
        let path = request.environment["PATH"]
        var arguments = request.arguments
        var executable = program
        var groupID: gid_t?
        var statusPipe: (readEnd: FileDescriptor, writeEnd: FileDescriptor)?
        if let sandbox = request.sandbox {
            if let problem = BubblewrapSandbox.unavailableReason { return .failure(LaunchError(message: problem + "; the agent is not started unsandboxed")) }
            // bwrap always starts, so a program that cannot run is told here, as exec-failed.
            if let problem = unexecutable(program, path: path) { return .failure(LaunchError(message: problem)) }
            // bwrap's stdin is a pipe: bwrap reports the sandboxed child's pid on a copy of it,
            // descriptor 3 (bwrap(1) --json-status-fd, which bwrap closes in the child), and the
            // child inherits the pipe itself to say when its sandbox is set up.
            // bwrap's own processes run in a group no agent shares (``BubblewrapSandbox/launcherGroupName``).
            executable = BubblewrapSandbox.program
            arguments = [BubblewrapSandbox.program, "--json-status-fd", "3"] + sandbox.plan(arguments).arguments.dropFirst()
            groupID = BubblewrapSandbox.launcherGroupID
            var ends: [Int32] = [-1, -1]
            guard backstop_pipe_cloexec(&ends) == 0 else {
                return .failure(LaunchError(message: "cannot make a pipe for bwrap's status: \(Errno(rawValue: errno))"))
            }
            // Read between lines by waiting on the epoll thread (``BubblewrapStatus``).
            _ = fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK)
            statusPipe = (FileDescriptor(rawValue: ends[0]), FileDescriptor(rawValue: ends[1]))
        } else if !program.contains("/") {
            guard let found = lookUp(program, in: path) else { return .failure(LaunchError(message: "\(program): not found in PATH")) }
            executable = found
        }
        defer { try? statusPipe?.readEnd.close() }
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard null >= 0 else {
            try? statusPipe?.writeEnd.close()
            return .failure(LaunchError(message: "cannot open /dev/null: \(Errno(rawValue: errno))"))
        }
        let streams = outputDescriptors(identifier: request.identifier)
        // What the child gets copies of, closed here once it has them.
        var handedOver = [null] + (streams.owned ? [streams.output, streams.error] : [])
        var error = streams.error
        // Without a pipe the output still goes where it went; only the tail is missing.
        if let errorTail, let writeEnd = try? errorTail.attach(relayingTo: streams.error).rawValue {
            error = writeEnd
            handedOver.append(writeEnd)
        }
        var descriptors = [null, request.discardsStandardOutput ? null : streams.output, error]
        if let statusPipe {
            descriptors[0] = statusPipe.writeEnd.rawValue
            descriptors.append(statusPipe.writeEnd.rawValue)
            handedOver.append(statusPipe.writeEnd.rawValue)
        }
        // Registered with the reaper, so that it never mistakes this child for an adopted one.
        let registration = StartRegistration()
        defer { registration.finish() }
        let spawned: Result<SpawnedProcess, SpawnError>
        do {
            spawned = .success(try await Spawner.spawn(executable, arguments: arguments, environment: request.environment, descriptors: descriptors, groupID: groupID))
        } catch {
            spawned = .failure(error)
        }
        handedOver.forEach { close($0) }
        let process: SpawnedProcess
        switch spawned {
        case .success(let child): process = child
        case .failure(let error):
            if error.step == .exec, request.sandbox == nil {
                return .failure(LaunchError(message: unexecutable(program, path: path) ?? "\(program): \(String(cString: strerror(error.errno.rawValue)))"))
            }
            return .failure(LaunchError(message: "\(executable): \(error.description)"))
        }
        registration.started(process.pid)
        let expiry = deadline.map { ContinuousClock.now.advanced(by: .seconds($0.seconds)) }
        /// `process`'s end, its `session` killed first if the deadline passes before it.
        func termination(killing session: Int32) async -> Termination {
            if let deadline, let expiry {
                deadline.record(session)
                let remaining = ContinuousClock.now.duration(to: expiry).components
                let seconds = Double(remaining.seconds) + Double(remaining.attoseconds) / 1e18
                if await !ProcessExits.shared.readable(process.pidfd, timeoutSeconds: seconds) {
                    deadline.expired()
                    signalGroup(session, SIGKILL)
                }
            }
            return await ProcessExits.shared.termination(of: process)
        }
        guard let statusPipe else {
            await started(process.pid)
            return .success(await termination(killing: process.pid))
        }
        // The agent is bwrap's child; nothing is started when bwrap fails before making it.
        let sandboxedChild = await BubblewrapStatus.childPID(from: statusPipe.readEnd)
        let childExit = ProcessExit()
        var isSetUp = false
        if let child = sandboxedChild {
            childExit.open(child)
            await started(child)
            isSetUp = await BubblewrapStatus.isSetUp(from: statusPipe.readEnd)
        }
        let bwrapTermination = await termination(killing: sandboxedChild ?? process.pid)
        let exitStatus = childExit.waitStatus()
        var termination = exitStatus.map(Termination.init(waitStatus:)) ?? bwrapTermination
        if case .exited(let code) = termination, exitStatus == nil || request.sandbox?.privateProcesses == true, code > 128, code <= 128 + 64 {
            // bwrap exits 128 + N for a child killed by signal N when the kernel could not tell
            // more, and so does the shell that is PID 1 of a private PID namespace.
            termination = .signaled(signal: code - 128, coreDumped: nil)
        }
        // bwrap's mounts, setpriv or an rlimit failed: a configuration error, never the
        // content's. (Killed before it was set up, it ends as killed: a stop, say.)
        guard isSetUp || (sandboxedChild != nil && termination.signal != nil) else {
            return .failure(LaunchError(message: "the sandbox could not be set up: \(sandboxedChild == nil ? "bwrap" : "its set-up") \(termination) before starting \(program) (its message is in the agent's own output)"))
        }
        if termination == .exited(code: BubblewrapSandbox.execFailedCode) {
            return .failure(LaunchError(message: "\(program): could not be executed in its sandbox (the reason is in the agent's own output)"))
        }
        return .success(termination)
    }

    /// Journal streams for the agent's stdout (priority info) and stderr (warning), else the
    /// daemon's own; `owned`: they are new descriptors, to be closed once the process has them.
    private static func outputDescriptors(identifier: String) -> (output: Int32, error: Int32, owned: Bool) {
        if Journal.isAvailable, let output = try? Journal.streamDescriptor(identifier: identifier, priority: .info) {
            if let error = try? Journal.streamDescriptor(identifier: identifier, priority: .warning) {
                return (output, error, true)
            }
            close(output)
        }
        return (STDOUT_FILENO, STDERR_FILENO, false)
    }

    /// Runs a probe command and says whether it passed: exit code 0 within `timeoutSeconds`.
    /// A probe still running at the timeout is killed with its process group (SIGKILL).
    /// - Returns: passed; failed with what happened ("exit code 1", "timed out after 10 s");
    ///   or could not run (its program is missing or not executable).
    /// - Parameter started: called with the probe's pid once it exists.
    public static func probe(
        _ request: LaunchRequest, timeoutSeconds: Double, started: @Sendable (Int32) async -> Void
    ) async -> ProbeResult {
        let deadline = ProbeDeadline(seconds: timeoutSeconds)
        let result = await run(request, errorTail: nil, deadline: deadline, started: started)
        // Nothing a probe starts outlives it: its session, and what left the session with its mark.
        if let pid = deadline.pid, let mark = request.environment[LaunchRequest.probeStoreVariable] {
            killRemains(ofSession: pid, mark: LaunchRequest.probeStoreVariable, value: mark)
        }
        if deadline.hasExpired { return .failed("timed out after \(AgentPolicy.format(timeoutSeconds)) s and was killed") }
        switch result {
        case .success(.exited(code: 0)): return .passed
        case .success(let termination): return .failed(termination.description)
        case .failure(let error): return .couldNotRun(error.message)
        }
    }

    /// Kills what is left of a finished run: its session, and every process that left the
    /// session carrying `mark`=`value` in its environment, with their descendants (SIGKILL).
    static func killRemains(ofSession pid: Int32, mark: String, value: String) {
        signalGroup(pid, SIGKILL)
        let find = {
            ProcessTable.survivors(ofSession: pid, environment: mark, value: value, isStartedHere: ChildReaper.shared.isKnown)
        }
        ProcessTable.kill(find(), thenWhat: find)
    }

    /// Sends `signal` to the agent's whole process group (kill(2) with `-pid`).
    public static func signalGroup(_ pid: Int32, _ signal: Int32) {
        if kill(-pid, signal) != 0 { _ = kill(pid, signal) }
    }

    /// The first executable regular file named `program` in the directories of `path` (a
    /// `PATH`, systemd's default when nil), as execvp(3) would find it; nil when there is none.
    static func lookUp(_ program: String, in path: String?) -> String? {
        (path ?? AgentEnvironment.defaultPath).split(separator: ":").lazy.map { $0 + "/" + program }.first { candidate in
            var info = stat()
            return stat(candidate, &info) == 0 && info.st_mode & S_IFMT == S_IFREG && access(candidate, X_OK) == 0
        }
    }

    /// Why `program` (a path, or a name looked up in `path`, the run's `PATH`) cannot be executed; nil when it can.
    static func unexecutable(_ program: String, path: String?) -> String? {
        guard program.contains("/") else {
            return lookUp(program, in: path) == nil ? "\(program): not found in PATH" : nil
        }
        var info = stat()
        guard stat(program, &info) == 0 else { return "\(program): no such file" }
        if info.st_mode & S_IFMT == S_IFDIR { return "\(program): is a directory" }
        guard access(program, X_OK) == 0 else { return "\(program): not executable (mode \(String(info.st_mode & 0o7777, radix: 8)))" }
        return nil
    }
}

/// What the sandbox says on the status pipe (the child's stdin): bwrap's `--json-status-fd`
/// messages (bwrap(1)), one JSON object per line, the first `{ "child-pid": N, ... }` once
/// the sandboxed child exists; then the sandbox's own line, ``BubblewrapSandbox/readyLine``,
/// once bwrap's mounts, setpriv and the rlimits are in place, just before the agent's exec.
enum BubblewrapStatus {
    /// The child's pid from the first message, nil when bwrap ended without one.
    static func childPID(from pipe: FileDescriptor) async -> Int32? {
        let object = await line(from: pipe).flatMap { (try? JSONSerialization.jsonObject(with: Data($0))) as? [String: Any] }
        return (object?["child-pid"] as? NSNumber).map { $0.int32Value }
    }

    /// Whether the sandbox was set up: its ready line came before the pipe's end.
    static func isSetUp(from pipe: FileDescriptor) async -> Bool {
        while let line = await line(from: pipe) {
            if line == Array(BubblewrapSandbox.readyLine.utf8) { return true }
        }
        return false
    }

    /// The next line (at most 4096 bytes), nil at the pipe's end. The pipe's read end is
    /// non-blocking: while it is empty, ``ProcessExits`` waits for it with the process ends.
    private static func line(from pipe: FileDescriptor) async -> [UInt8]? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 4096 {
            let count = read(pipe.rawValue, &byte, 1)
            if count == 1 {
                if byte == UInt8(ascii: "\n") { break }
                line.append(byte)
            } else if count < 0, errno == EAGAIN {
                await ProcessExits.shared.readable(pipe.rawValue)
            } else if count == 0 || errno != EINTR {
                return line.isEmpty ? nil : line
            }
        }
        return line
    }
}

/// The pid of bwrap's sandboxed child, once known, and whether its sandbox was set up.
// @unchecked: `child` and `setUp` are only touched with `lock` held.
final class SandboxedChild: @unchecked Sendable {
    private let lock = NSLock()
    private var child: Int32?
    private var setUp = false

    var pid: Int32? { lock.withLock { child } }
    var isSetUp: Bool { lock.withLock { setUp } }

    func record(_ pid: Int32) { lock.withLock { child = pid } }
    func recordSetUp() { lock.withLock { setUp = true } }
}

/// The full exit status of a sandboxed agent, core-dump bit included, from its pidfd.
///
/// The agent is bwrap's child, reaped by bwrap, which exits with the agent's code or
/// 128 + its signal. Holding a pidfd of the agent lets Backstop ask the kernel afterwards
/// with `ioctl(PIDFD_GET_INFO)` and `PIDFD_INFO_EXIT` (linux/pidfd.h, Linux 6.15 and later),
/// which keeps the exit status of a reaped process for as long as a pidfd is open.
/// On older kernels the ioctl fails and the core-dump bit stays unknown.
// @unchecked: `descriptor` is written once, before the run ends and it is read.
final class ProcessExit: @unchecked Sendable {
    private var descriptor: Int32 = -1

    /// `struct pidfd_info` of linux/pidfd.h (Linux 6.16 layout, 72 bytes).
    private struct PidfdInfo {
        var mask: UInt64 = 0
        var cgroupID: UInt64 = 0
        var ids: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var exitCode: Int32 = 0
        var coredumpMask: UInt32 = 0
        var spare: UInt32 = 0
    }

    /// `PIDFD_INFO_EXIT`.
    private static let exitMask: UInt64 = 1 << 3
    /// `PIDFD_GET_INFO` = `_IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info)`.
    private static let getInfoRequest = UInt(3 << 30 | MemoryLayout<PidfdInfo>.size << 16 | 0xFF << 8 | 11)

    deinit {
        if descriptor >= 0 { close(descriptor) }
    }

    /// Opens a pidfd of `pid`, a process that is not Backstop's child (pidfd_open(2)); when
    /// it has already been reaped the exit status stays unknown.
    func open(_ pid: Int32) {
        descriptor = backstop_pidfd_open(pid)
    }

    /// The wait status (as waitpid(2) gives it) of the reaped process, nil when the kernel cannot tell.
    func waitStatus() -> Int32? {
        guard descriptor >= 0 else { return nil }
        var info = PidfdInfo()
        info.mask = Self.exitMask
        let result = withUnsafeMutablePointer(to: &info) { ioctl(descriptor, Self.getInfoRequest, UnsafeMutableRawPointer($0)) }
        guard result == 0, info.mask & Self.exitMask != 0 else { return nil }
        return info.exitCode
    }
}

/// Announces one start to ``ChildReaper`` and ends it exactly once.
// @unchecked: the fields are only touched with `lock` held.
private final class StartRegistration: @unchecked Sendable {
    private let lock = NSLock()
    private var pid: Int32?

    init() {
        ChildReaper.shared.startBegins()
    }

    /// The child exists: it is known to the reaper from now on.
    func started(_ pid: Int32) {
        lock.withLock { self.pid = pid }
        ChildReaper.shared.startEnded(pid: pid)
    }

    /// The run is over: the child (if one was made) has been reaped through its pidfd.
    func finish() {
        if let pid = lock.withLock({ pid }) {
            ChildReaper.shared.reapedByStarter(pid)
        } else {
            ChildReaper.shared.startEnded(pid: nil)
        }
    }
}

/// A probe's time limit, and what its run found: the probe's pid, whether the time was up.
// @unchecked: the fields are only touched with `lock` held.
private final class ProbeDeadline: @unchecked Sendable {
    /// How long the probe may run, from its start.
    let seconds: Double
    private let lock = NSLock()
    private var expiredBeforeEnd = false
    private var probePID: Int32?

    init(seconds: Double) {
        self.seconds = seconds
    }

    /// The probe's pid, once it started.
    var pid: Int32? { lock.withLock { probePID } }
    /// Whether the time was up before the probe ended, so that its session was killed.
    var hasExpired: Bool { lock.withLock { expiredBeforeEnd } }

    func record(_ pid: Int32) { lock.withLock { probePID = pid } }
    func expired() { lock.withLock { expiredBeforeEnd = true } }
}

/// An agent that could not be started (`exec-failed`).
public struct LaunchError: Error, Equatable, Sendable {
    /// Why, e.g. the program is missing or not executable; becomes the `exec-failed` decision's message.
    public var message: String
}
