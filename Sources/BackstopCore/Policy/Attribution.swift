import Foundation

/// What a failure says about the content that was active when it happened.
///
/// This is the one place that decides it; README.md ("Which failures count against
/// content") shows the same table, and a unit test keeps the two in step.
public enum Attribution: String, Sendable, Equatable, Codable {
    /// Counts toward the crash loop of the active version: enough of them in the
    /// window roll a candidate back (or walk the escalation ladder on known-good content).
    case content
    /// The agent is restarted with backoff; the content is not blamed.
    case restartOnly = "restart-only"
    /// The agent's setup is wrong, not its content: reported with the fix, retried
    /// with backoff, never rolled back.
    case configuration
}

extension FailureReason {
    /// The attribution table (README.md shows it too).
    /// - Parameters:
    ///   - cleanExitIsFailure: `clean_exit_is_failure`: a clean exit then counts like any other exit.
    ///   - programIsContent: the program itself comes from the content (`{content}` in the
    ///     first word of `exec`): then a program that cannot be executed is the content's fault.
    public func attribution(cleanExitIsFailure: Bool, programIsContent: Bool = false) -> Attribution {
        switch self {
        // memory-limit: against a candidate, when a known-good version ran within the limit (AgentPolicy.agentExited).
        case .crashed, .exited, .hung, .startTimeout, .healthCheck, .oomKilled, .memoryLimit: return .content
        case .cleanExit: return cleanExitIsFailure ? .content : .restartOnly
        case .killedExternally: return .restartOnly
        case .execFailed: return programIsContent ? .content : .configuration
        case .daemonized: return .configuration
        }
    }

    /// What an operator should do about a failure of this kind, when there is something
    /// beyond the content to fix; appended to the failure's journal message.
    public var remedy: String? {
        switch self {
        case .execFailed:
            return "check that the agent can be started (exec or ready_check_exec names an executable program; with runner = systemd, the unit exists and starts; backstopd can make its content_link); Backstop keeps retrying with backoff and does not blame the content"
        case .daemonized:
            return "configure the agent to stay in the foreground (for clamd: Foreground yes); Backstop starts it again once the background processes have exited"
        case .oomKilled:
            return "the agent ran out of memory; raise its memory limit or check what grew"
        case .killedExternally:
            return "something outside Backstop stopped the agent; Backstop restarts it and does not blame the content"
        // memory-limit: its exit message names the limit and says what to do.
        case .crashed, .exited, .cleanExit, .hung, .startTimeout, .healthCheck, .memoryLimit:
            return nil
        }
    }
}

/// Whose OOM killer ended an agent, as the kernel log says.
public enum OOMKill: Sendable, Equatable {
    /// The machine ran out of memory (`Out of memory: Killed process`).
    case machine
    /// The agent's own cgroup reached its `memory_max` of `bytes` (`Memory cgroup out of memory: Killed process`).
    case memoryMax(bytes: UInt64)
}

extension FailureReason {
    /// The reason for an exit Backstop did not ask for.
    /// - Parameters:
    ///   - termination: how the process ended (waitid(2)).
    ///   - oomKilled: the kernel log records an OOM kill of the process.
    ///   - survivorsRemain: processes of the agent's session outlived it.
    public static func classify(
        _ termination: Termination, oomKilled: Bool, survivorsRemain: Bool, successExitStatus: SuccessExitStatus = SuccessExitStatus()
    ) -> FailureReason {
        switch termination {
        case .signaled(SIGKILL, _) where oomKilled: return .oomKilled
        case .exited(0),
             _ where successExitStatus.contains(termination):
            return survivorsRemain ? .daemonized : .cleanExit
        case .exited: return .exited
        // Backstop signals only an agent it is stopping, so these came from elsewhere.
        case .signaled(SIGTERM, _), .signaled(SIGKILL, _): return .killedExternally
        case .signaled: return .crashed
        }
    }
}

/// `success_exit_status`: exit codes and signals that end an agent cleanly and on purpose,
/// besides exit code 0, as systemd's `SuccessExitStatus=` (systemd.service(5)); such an end is
/// a `clean-exit`, never counted against the content (unless `clean_exit_is_failure`).
public struct SuccessExitStatus: Sendable, Equatable {
    /// Exit codes, 0 to 255.
    public var codes: Set<Int32> = []
    /// Signal numbers (SIGTERM is 15).
    public var signals: Set<Int32> = []

    /// None besides exit code 0.
    public init(codes: Set<Int32> = [], signals: Set<Int32> = []) {
        self.codes = codes
        self.signals = signals
    }

    /// Whether `termination` is one of them.
    public func contains(_ termination: Termination) -> Bool {
        switch termination {
        case .exited(let code): return codes.contains(code)
        case .signaled(let signal, _): return signals.contains(signal)
        }
    }
}
