import Foundation
import Subprocess
import SystemPackage

/// What to run for one agent start.
public struct LaunchRequest: Sendable, Equatable {
    /// The `SYSLOG_IDENTIFIER` of the agent's output in the journal: its name.
    public var identifier: String
    /// Program and arguments, `{content}` already replaced.
    public var arguments: [String]
    /// Added to (or replacing in) the daemon's environment.
    public var environment: [String: String]

    /// A request as given; ``make(agent:exec:store:contentPath:version:notifySocket:watchdogSeconds:)`` builds the usual one.
    public init(identifier: String, arguments: [String], environment: [String: String]) {
        self.identifier = identifier
        self.arguments = arguments
        self.environment = environment
    }

    /// The environment variable that marks every process of an agent with its store,
    /// so that a restarted daemon finds what a killed one left behind.
    public static let storeVariable = "BACKSTOP_STORE"

    /// The request for `exec` on a content version: `{content}` replaced by the
    /// version's path; `BACKSTOP_CONTENT`, `BACKSTOP_CONTENT_VERSION`, `BACKSTOP_STORE`,
    /// `NOTIFY_SOCKET` and, with a watchdog, `WATCHDOG_USEC` (sd_watchdog_enabled(3)) set.
    public static func make(
        agent: String, exec: [String], store: String, contentPath: String, version: String, notifySocket: String?,
        watchdogSeconds: Int
    ) -> LaunchRequest {
        var environment = [
            "BACKSTOP_CONTENT": contentPath,
            "BACKSTOP_CONTENT_VERSION": version,
            storeVariable: store,
        ]
        if let notifySocket { environment["NOTIFY_SOCKET"] = notifySocket }
        if watchdogSeconds > 0 { environment["WATCHDOG_USEC"] = String(watchdogSeconds * 1_000_000) }
        return LaunchRequest(
            identifier: agent,
            arguments: exec.map { $0.replacingOccurrences(of: "{content}", with: contentPath) },
            environment: environment)
    }
}

/// Runs agent processes directly, without systemd, through swift-subprocess.
///
/// Each agent gets a session of its own (setsid(2)), so that its whole process
/// group can be signalled; exit detection is swift-subprocess's pidfd/epoll
/// monitor (no polling). The agent's stdout and stderr go to the journal under its
/// own identifier (sd_journal_stream_fd(3)), or are the daemon's when no journald listens.
public enum DirectRunner {
    /// Starts `request` and waits for the process to end.
    /// - Parameter started: called with the pid once the process exists.
    /// - Returns: how it ended, or the reason it could not be started.
    public static func run(
        _ request: LaunchRequest, started: @Sendable (Int32) async -> Void
    ) async -> Result<Termination, LaunchError> {
        guard let program = request.arguments.first else { return .failure(LaunchError(message: "empty command line")) }
        var options = PlatformOptions()
        options.createSession = true
        let executable: Executable = program.contains("/") ? .path(FilePath(program)) : .name(program)
        var overrides: [Environment.Key: String?] = [:]
        for (key, value) in request.environment {
            if let key = Environment.Key(rawValue: key) { overrides[key] = value }
        }
        let exitInfo = ProcessExit()
        let (output, error) = outputDescriptors(identifier: request.identifier)
        do {
            let result = try await Subprocess.run(
                executable,
                arguments: Arguments(Array(request.arguments.dropFirst())),
                environment: .inherit.updating(overrides),
                platformOptions: options,
                input: .none,
                output: output,
                error: error
            ) { execution in
                exitInfo.hold(execution.processIdentifier.processDescriptor)
                await started(execution.processIdentifier.value)
            }
            if let status = exitInfo.waitStatus() { return .success(Termination(waitStatus: status)) }
            switch result.terminationStatus {
            case .exited(let code): return .success(.exited(code: code))
            case .signaled(let signal): return .success(.signaled(signal: signal, coreDumped: nil))
            }
        } catch let error as SubprocessError {
            return .failure(LaunchError(message: Self.describe(error, program: program)))
        } catch {
            return .failure(LaunchError(message: "\(error)"))
        }
    }

    /// Journal streams for the agent's stdout (priority info) and stderr (warning), else the daemon's own.
    private static func outputDescriptors(identifier: String) -> (FileDescriptorOutput, FileDescriptorOutput) {
        if Journal.isAvailable, let output = try? Journal.streamDescriptor(identifier: identifier, priority: .info) {
            if let error = try? Journal.streamDescriptor(identifier: identifier, priority: .warning) {
                return (.fileDescriptor(FileDescriptor(rawValue: output), closeAfterSpawningProcess: true),
                        .fileDescriptor(FileDescriptor(rawValue: error), closeAfterSpawningProcess: true))
            }
            close(output)
        }
        return (.fileDescriptor(.standardOutput, closeAfterSpawningProcess: false),
                .fileDescriptor(.standardError, closeAfterSpawningProcess: false))
    }

    /// Sends `signal` to the agent's whole process group (kill(2) with `-pid`).
    public static func signalGroup(_ pid: Int32, _ signal: Int32) {
        if kill(-pid, signal) != 0 { _ = kill(pid, signal) }
    }

    private static func describe(_ error: SubprocessError, program: String) -> String {
        let cause = error.underlyingError.map { String(cString: strerror($0.rawValue)) }
        switch error.code {
        case .executableNotFound: return "\(program): no such executable"
        default: return "\(program): \(cause ?? "\(error)")"
        }
    }
}

/// The full exit status of a reaped process, core-dump bit included, from its pidfd.
///
/// swift-subprocess reaps the agent itself and reports `CLD_DUMPED` like `CLD_KILLED`.
/// Holding a duplicate of its pidfd lets Backstop ask the kernel afterwards with
/// `ioctl(PIDFD_GET_INFO)` and `PIDFD_INFO_EXIT` (linux/pidfd.h, Linux 6.15 and later),
/// which keeps the exit status of a reaped process for as long as a pidfd is open.
/// On older kernels the ioctl fails and the core-dump bit stays unknown.
// @unchecked: `descriptor` is written once in the spawn closure, before the run ends and it is read.
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

    /// Keeps a duplicate of the process's pidfd.
    func hold(_ pidfd: Int32) {
        descriptor = fcntl(pidfd, F_DUPFD_CLOEXEC, 0)
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

/// An agent that could not be started (`exec-failed`).
public struct LaunchError: Error, Equatable, Sendable {
    /// Why, e.g. the program is missing or not executable; becomes the `exec-failed` decision's message.
    public var message: String
}

/// Reads facts about processes from /proc (proc(5)).
public enum ProcessTable {
    /// The processes (other than this one) whose environment holds `NAME=value` exactly,
    /// from `/proc/PID/environ`. Needs root to read other users' processes.
    public static func processes(withEnvironment name: String, value: String) -> [Int32] {
        let wanted = Array("\(name)=\(value)".utf8)
        let own = getpid()
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard pid != own, let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
            return environ.split(separator: 0).contains { $0.elementsEqual(wanted) }
        }
    }
}
