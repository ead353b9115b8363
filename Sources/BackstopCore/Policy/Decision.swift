import Foundation

/// One instant as the policy sees it: a monotonic reading for windows and
/// deadlines, and the wall clock for records that operators read.
public struct Moment: Sendable, Equatable {
    /// Seconds on CLOCK_BOOTTIME (clock_gettime(2)): monotonic, counts suspend,
    /// restarts at each boot. Only compared with readings of the same boot.
    public var monotonicSeconds: Double
    /// Wall-clock time, for RFC 3339 fields only; never used for durations.
    public var wall: Date

    /// An instant from given readings; tests use it to drive the policy without a clock.
    public init(monotonicSeconds: Double, wall: Date) {
        self.monotonicSeconds = monotonicSeconds
        self.wall = wall
    }

    /// The current time of this machine (CLOCK_BOOTTIME and the wall clock).
    public static func now() -> Moment {
        var spec = timespec()
        clock_gettime(CLOCK_BOOTTIME, &spec)
        return Moment(monotonicSeconds: Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9, wall: Date())
    }
}

/// The kinds of decision Backstop reports: the values of `BACKSTOP_EVENT` (SPEC.md, Journal).
public enum EventKind: String, Sendable, CaseIterable, Codable {
    case agentStarted = "agent-started"
    case agentReady = "agent-ready"
    case agentExited = "agent-exited"
    case agentHung = "agent-hung"
    case crashLoop = "crash-loop"
    case bootAssessed = "boot-assessed"
    case rollback
    case contentStaged = "content-staged"
    case contentActivated = "content-activated"
    case contentPromoted = "content-promoted"
    case contentQuarantined = "content-quarantined"
    case contentReleased = "content-released"
    case preflightFailed = "preflight-failed"
    case safeMode = "safe-mode"
    case gaveUp = "gave-up"
}

/// Why an agent run ended without Backstop asking it to (`BACKSTOP_REASON` of
/// `agent-exited` and `agent-hung`). Whether a reason counts against the content is
/// ``FailureReason/attribution(cleanExitIsFailure:)``.
public enum FailureReason: String, Sendable, Codable, Equatable, CaseIterable {
    /// Killed by a signal it raised or the kernel sent (SIGSEGV, SIGABRT, SIGBUS, ...).
    case crashed
    /// Exited with a non-zero code.
    case exited
    /// Exited with code 0.
    case cleanExit = "clean-exit"
    /// Missed a watchdog heartbeat for `watchdog_sec`.
    case hung
    /// Not ready within `start_timeout_sec`.
    case startTimeout = "start-timeout"
    /// `health_check_exec` failed `health_check_failures` times in a row.
    case healthCheck = "health-check"
    /// Killed by the kernel's OOM killer (its `Killed process PID` record in the kernel log).
    case oomKilled = "oom-killed"
    /// Killed by the OOM killer of its own memory cgroup, at its `memory_max`; counted against
    /// a candidate only when a known-good version exists (it ran within the same limit).
    case memoryLimit = "memory-limit"
    /// Ended by a SIGTERM or SIGKILL that Backstop did not send.
    case killedExternally = "killed-externally"
    /// The program could not be executed at all (missing, not executable, bad working directory).
    case execFailed = "exec-failed"
    /// Exited 0 soon after start and left processes of its session running: it forked into the background.
    case daemonized
}

/// How an agent process ended, from waitid(2)'s `si_code`/`si_status`.
public enum Termination: Sendable, Equatable, Codable {
    /// `CLD_EXITED` with the exit code.
    case exited(code: Int32)
    /// `CLD_KILLED` or `CLD_DUMPED` with the signal number; `coreDumped` is nil when
    /// the kernel could not say (see ``ProcessExit``).
    case signaled(signal: Int32, coreDumped: Bool? = nil)

    /// "exit code 3", "signal SIGSEGV (core dumped)".
    public var description: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .signaled(let signal, let coreDumped):
            return "signal \(SignalName.of(signal))" + (coreDumped == true ? " (core dumped)" : "")
        }
    }

    /// The exit code, for `exited`.
    public var exitStatus: Int32? {
        if case .exited(let code) = self { return code }
        return nil
    }

    /// The signal number, for `signaled`.
    public var signal: Int32? {
        if case .signaled(let signal, _) = self { return signal }
        return nil
    }

    /// Whether a core was dumped, for `signaled` when the kernel told.
    public var coreDumped: Bool? {
        if case .signaled(_, let coreDumped) = self { return coreDumped }
        return nil
    }

    /// The termination a waitid(2)/waitpid(2) status word describes (WIFEXITED, WTERMSIG, WCOREDUMP).
    public init(waitStatus status: Int32) {
        let signal = status & 0x7F
        if signal == 0 {
            self = .exited(code: (status >> 8) & 0xFF)
        } else {
            self = .signaled(signal: signal, coreDumped: status & 0x80 != 0)
        }
    }
}

/// Signal names as `kill -l` prints them, with the `SIG` prefix.
public enum SignalName {
    /// The number of a signal named as ``of(_:)`` names it ("SIGTERM" is 15), nil for none.
    public static func number(of name: String) -> Int32? {
        (1...31).first { of(Int32($0)) == name }.map(Int32.init)
    }

    /// "SIGSEGV" for 11; "signal 99" for numbers without a name.
    public static func of(_ number: Int32) -> String {
        guard let raw = strsignal(number) else { return "signal \(number)" }
        let known: [Int32: String] = [
            SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
            SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
            SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM",
            SIGSYS: "SIGSYS", SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ",
        ]
        return known[number] ?? String(cString: raw)
    }
}

/// One decision of the policy, as it goes to the journal and the timeline.
public struct Decision: Sendable, Equatable {
    /// The kind of decision, `BACKSTOP_EVENT`; also picks `MESSAGE_ID` and `PRIORITY`.
    public var event: EventKind
    /// The agent it is about (`BACKSTOP_AGENT`).
    public var agent: String
    /// The version the decision is about (`BACKSTOP_CONTENT_VERSION`).
    public var version: String?
    /// The version active before (`BACKSTOP_PREVIOUS_VERSION`), for rollbacks and activations.
    public var previousVersion: String?
    /// The agent's exit code (`BACKSTOP_EXIT_STATUS`), when it exited.
    public var exitStatus: Int32?
    /// The signal number that ended the agent, written by name (`BACKSTOP_SIGNAL`, e.g. `SIGSEGV`).
    public var signal: Int32?
    /// Whether the agent dumped core, when it died by a signal and the kernel told.
    public var coreDumped: Bool?
    /// Failures in the window at the time of the decision (`BACKSTOP_FAILURES`).
    public var failures: Int?
    /// The boot a `boot-assessed` decision judges (`BACKSTOP_BOOT_ID`, 32 hex digits).
    public var bootID: String?
    /// Why (`BACKSTOP_REASON`), e.g. a ``FailureReason`` or `crash-loop`; nil for an exit that is no failure.
    public var reason: String?
    /// One sentence an operator understands without the fields.
    public var message: String

    /// A decision; every field but the kind, agent, version and message is optional.
    public init(
        _ event: EventKind, agent: String, version: String?, previousVersion: String? = nil,
        exitStatus: Int32? = nil, signal: Int32? = nil, coreDumped: Bool? = nil, failures: Int? = nil,
        bootID: String? = nil, reason: String? = nil, message: String
    ) {
        self.bootID = bootID
        self.coreDumped = coreDumped
        self.event = event
        self.agent = agent
        self.version = version
        self.previousVersion = previousVersion
        self.exitStatus = exitStatus
        self.signal = signal
        self.failures = failures
        self.reason = reason
        self.message = message
    }
}
