import CLinux
import Foundation

/// How a preflight ended.
public enum PreflightOutcome: Sendable, Equatable {
    /// The instance ran for `preflight_sec` (ready, heartbeats on time) or exited 0.
    case passed
    /// The instance failed: `reason` is a ``FailureReason`` word (`crashed`, `exited`,
    /// `start-timeout`, `hung`, `clean-exit`), `detail` says how; `output` is the end of its stderr.
    case failed(reason: FailureReason, detail: String, output: String)
    /// The instance could not be started (its program, the sandbox): not the content's fault.
    case couldNotRun(String)
}

/// Preflight: a staged version run once in a throwaway instance of the agent before it goes
/// live. The instance runs in the agent's sandbox with a network namespace of its own and a
/// private copy of each writable path (but devices and kernel interfaces, ``isKernelInterface(_:)``), on a notify socket of its own (`<runtime>/notify/<agent>.preflight`),
/// for `preflight_sec`. It fails as the live agent would: it crashes or exits non-zero,
/// gives no `READY=1` within `start_timeout_sec` (with `notify`), or misses a `WATCHDOG=1`
/// (with `watchdog_sec`). The live agent is not touched. The caller runs one at a time per agent.
enum Preflight {
    /// The ``RunRecord`` kind of a preflight instance.
    static let runKind = "preflight"

    private enum Event: Sendable {
        case started(Int32)
        case notified(NotifyMessage)
        case ended(Result<Termination, LaunchError>)
        case startTimeout
        case watchdog(generation: Int)
        case survived
    }

    /// Runs the preflight of `version` of `agent`, stored in `store`; `confine` puts the
    /// instance's process into a cgroup of its own for the sandbox's limits (see ``BubblewrapSandbox/cgroupScope``).
    static func run(
        agent: AgentConfiguration, daemon: DaemonConfiguration, store: ContentStore, version: String,
        confine: @escaping @Sendable (Int32) async -> Bool
    ) async -> PreflightOutcome {
        var sandbox: BubblewrapSandbox
        do { sandbox = try BubblewrapSandbox(agent: agent, daemon: daemon, contentPath: store.path(of: version)) } catch {
            return .couldNotRun("sandbox: \(error)")
        }
        sandbox.spec.privateNetwork = true
        sandbox.privateProcesses = true
        var linkMade: String?
        if let link = agent.contentLink {
            switch contentLinkView(link, candidate: store.path(of: version)) {
            case .success(let overlay):
                sandbox.contentOverlay = overlay
                if overlay == nil { linkMade = link }
            case .failure(let error): return .couldNotRun(error.message)
            }
        }
        defer {
            // Removed unless something else has been put there meanwhile.
            if let linkMade, (try? FileManager.default.destinationOfSymbolicLink(atPath: linkMade)) == store.path(of: version) { unlink(linkMade) }
        }
        let scratch = daemon.preflightDirectory(agent: agent.name)
        defer { ContentStore.removeTree(scratch) }
        ContentStore.removeTree(scratch)
        do {
            try DurableFile.makeDirectories(scratch, mode: 0o700)
            for (index, path) in agent.sandbox.readWritePaths.enumerated() where BubblewrapSandbox.exists(path) && !isKernelInterface(path) {
                let copy = scratch + "/\(index)"
                // What the path names, not a symlink that would lead the copy back to the live directory.
                try copyPreservingOwners(BubblewrapSandbox.resolved(path), to: copy)
                sandbox.substitutes[path] = copy
            }
        } catch {
            return .couldNotRun("cannot copy the agent's writable paths for the preflight: \(error)")
        }
        let (events, emit) = AsyncStream.makeStream(of: Event.self)
        let socketPath = daemon.notifySocketPath(agent: agent.name) + ".preflight"
        let socket: NotifySocket
        do {
            socket = try NotifySocket(path: socketPath, queue: DispatchQueue(label: "backstop.preflight.\(agent.name)")) {
                emit.yield(.notified($0))
            }
        } catch {
            return .couldNotRun("cannot open the preflight's notify socket \(socketPath): \(error)")
        }
        defer { socket.invalidate() }
        chown(socketPath, sandbox.account.uid, sandbox.account.gid)
        sandbox.notifySocket = socketPath

        var request = LaunchRequest.make(
            agent: agent.name, exec: agent.preflightExec.isEmpty ? agent.exec : agent.preflightExec,
            environment: agent.environment, store: store.root,
            contentPath: store.path(of: version), version: version, notifySocket: socketPath, watchdogSeconds: agent.watchdogSeconds)
        // A mark of its own: what it leaves is never taken for the live agent's.
        request.environment[LaunchRequest.storeVariable] = nil
        request.environment[LaunchRequest.preflightStoreVariable] = store.root
        request.sandbox = sandbox
        let record = RunRecord(runtimeDirectory: daemon.runtimeDirectory, agent: agent.name, kind: runKind)
        defer { record.ended() }
        let errorTail = OutputTail()
        let run = Task {
            let result = await DirectRunner.run(request, errorTail: errorTail) { pid in
                record.started(pid)
                _ = await confine(pid)
                emit.yield(.started(pid))
            }
            emit.yield(.ended(result))
        }
        var timers: [Task<Void, Never>] = []
        func after(_ seconds: Int, _ event: Event) {
            timers.append(Task {
                try? await Task.sleep(for: .seconds(seconds))
                if !Task.isCancelled { emit.yield(event) }
            })
        }
        defer { timers.forEach { $0.cancel() } }

        var pid: Int32?
        var ready = !agent.notify
        var heartbeats = 0
        var outcome: PreflightOutcome?
        var ended = false
        var stopping = false
        var survived = false
        after(agent.preflightSeconds, .survived)
        if agent.notify { after(agent.startTimeoutSeconds, .startTimeout) }
        for await event in events {
            switch event {
            case .started(let started):
                pid = started
                if ready, agent.watchdogSeconds > 0 { after(agent.watchdogSeconds, .watchdog(generation: 0)) }
            case .notified(let message):
                // The socket is this instance's alone, reachable only from its sandbox (see NotifySocket).
                if message.value("READY") == "1", !ready {
                    ready = true
                    if survived, outcome == nil { outcome = .passed }
                    if agent.watchdogSeconds > 0 { after(agent.watchdogSeconds, .watchdog(generation: heartbeats)) }
                }
                if message.value("WATCHDOG") == "1" {
                    heartbeats += 1
                    if ready, agent.watchdogSeconds > 0 { after(agent.watchdogSeconds, .watchdog(generation: heartbeats)) }
                }
            case .startTimeout:
                if !ready, outcome == nil {
                    outcome = .failed(reason: .startTimeout, detail: "no READY=1 within start_timeout_sec (\(agent.startTimeoutSeconds) s)", output: "")
                }
            case .watchdog(let generation):
                if generation == heartbeats, outcome == nil {
                    outcome = .failed(reason: .hung, detail: "no WATCHDOG=1 within watchdog_sec (\(agent.watchdogSeconds) s)", output: "")
                }
            case .survived:
                // One still starting has until start_timeout_sec to become ready.
                survived = true
                if outcome == nil, ready { outcome = .passed }
            case .ended(let result):
                ended = true
                guard outcome == nil else { break }
                switch result {
                case .failure(let error): outcome = .couldNotRun(error.message)
                case .success(.exited(code: 0)):
                    outcome = agent.cleanExitIsFailure ? .failed(reason: .cleanExit, detail: "exit code 0 (clean_exit_is_failure)", output: "") : .passed
                case .success(let termination)
                    where FailureReason.classify(termination, oomKilled: false, survivorsRemain: false) == .killedExternally:
                    // Someone else's SIGTERM or SIGKILL, as for a live agent: not the content's doing.
                    outcome = .couldNotRun("the instance was killed from outside (\(termination.description))")
                case .success(let termination):
                    outcome = .failed(reason: termination.signal == nil ? .exited : .crashed, detail: termination.description, output: "")
                }
            }
            if ended { break }
            if outcome != nil, !stopping, let pid {
                // Over: a throwaway instance needs no grace; its namespace ends with its PID 1.
                stopping = true
                DirectRunner.signalGroup(pid, SIGKILL)
            }
        }
        _ = await run.value
        // Nothing the instance started outlives the preflight: its session, and what left it with the mark.
        if let pid { DirectRunner.killRemains(ofSession: pid, mark: LaunchRequest.preflightStoreVariable, value: store.root) }
        if case .failed(let reason, let detail, _) = outcome { return .failed(reason: reason, detail: detail, output: errorTail.text) }
        return outcome ?? .couldNotRun("the preflight ended without a result")
    }

    /// How the preflight instance finds `candidate` through the agent's `content_link` at
    /// `link`, never the live version: a link to a version directory (an active version) gets
    /// the candidate mounted over that directory in the instance's mount namespace (the overlay
    /// returned); with no link (no version active, so no agent runs on one) the link is made,
    /// to the candidate, for the preflight (nil returned), and removed after it.
    /// - Returns: ``SandboxError`` when the link is something else, or cannot be made (a
    ///   setup problem, not the candidate's).
    private static func contentLinkView(_ link: String, candidate: String) -> Result<BubblewrapSandbox.ContentOverlay?, SandboxError> {
        var info = stat()
        guard lstat(link, &info) == 0 else {
            guard errno == ENOENT else { return .failure(SandboxError(message: "content_link \(link): \(String(cString: strerror(errno)))")) }
            do {
                try DurableFile.makeDirectories((link as NSString).deletingLastPathComponent)
                try DurableFile.replaceSymlink(at: link, pointingTo: candidate)
            } catch {
                return .failure(SandboxError(message: "content_link \(link) cannot be made for the preflight: \(error)"))
            }
            return .success(nil)
        }
        let target = BubblewrapSandbox.resolved(link)
        var targetInfo = stat()
        guard (info.st_mode & S_IFMT) == S_IFLNK, stat(target, &targetInfo) == 0, (targetInfo.st_mode & S_IFMT) == S_IFDIR else {
            return .failure(SandboxError(message: "content_link \(link) is not a link to a version directory, so the preflight instance could not find the candidate through it"))
        }
        return .success(BubblewrapSandbox.ContentOverlay(candidate: candidate, linkTarget: target))
    }

    /// File system types (statfs(2) `f_type`) whose files are the kernel's interfaces, not data:
    /// proc, sysfs, cgroup, cgroup2, debugfs, tracefs, securityfs, configfs, bpf, efivarfs, pstore.
    private static let kernelInterfaceFileSystems: Set<Int> = [
        0x9fa0, 0x6265_6572, 0x0027_e0eb, 0x6367_7270, 0x6462_6720, 0x7472_6163, 0x7363_6673, 0x6265_6570,
        0xcafe_4a11, 0xde5e_81e4, 0x6165_676c,
    ]

    /// Whether the writable `path` is a device or one of the kernel's interfaces (such as
    /// /proc/sysrq-trigger): there is nothing to copy, and a copy would not work as one. The
    /// preflight instance gets the live one, as the agent does, and what it writes there
    /// reaches this machine (`--check-config` says so).
    static func isKernelInterface(_ path: String) -> Bool {
        let real = BubblewrapSandbox.resolved(path)
        var info = stat()
        if stat(real, &info) == 0, [S_IFCHR, S_IFBLK].contains(info.st_mode & S_IFMT) { return true }
        let descriptor = open(real, OpenBundle.pathOnlyFlag | O_CLOEXEC)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        return kernelInterfaceFileSystems.contains(Int(backstop_file_system_type(descriptor)))
    }

    /// `path` copied to `copy` with cp(1) `-a`: modes, owners and links as they are.
    private static func copyPreservingOwners(_ path: String, to copy: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/cp")
        process.arguments = ["-a", "--", path, copy]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw SandboxError(message: "cp -a \(path) exited \(process.terminationStatus)") }
    }
}
