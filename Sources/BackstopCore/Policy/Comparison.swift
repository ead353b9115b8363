import Foundation

// No verdict against content without a comparison: what the policy keeps when a failure
// cannot be judged against a version that is known to work here (README.md, "Which
// failures count against content"; Sandbox, "Preflight").

/// An agent crash-looping on content with no known-good version to compare it with (its
/// first content): reported, retried with backoff, never quarantined on that evidence alone.
public struct FirstContentFailure: Sendable, Equatable, Codable {
    /// The version it fails on.
    public var version: String
    /// How it fails (``FailureRecord/signature``), e.g. `exited` or `crashed SIGSEGV`.
    public var failure: String
    /// What its output named as being in its way, nil when it named nothing.
    public var obstacle: SandboxObstacle?
    /// When the crash loop was first seen.
    public var since: Date

    /// For `status`'s `degraded_reason`: "failing on its first content v1 (exited), no known-good
    /// version to compare it with, ..." and, with an obstacle, the setting to open.
    public var summary: String {
        var text = "failing on its first content \(version) (\(failure)), no known-good version to compare it with, so it is not quarantined; retried with backoff"
        if let obstacle {
            text += "; its output shows \(obstacle.explanation): open \(obstacle.setting) (\(obstacle.remedy))"
        }
        return text
    }
}

/// How a preflight that failed was judged against its control: the same preflight run on the
/// active (or known-good) version.
public enum PreflightControl: Sendable, Equatable {
    /// The control passed: the failure is the candidate's own.
    case passed(version: String)
    /// The control failed too (`detail` says how, `obstacle` what its output named): the
    /// preflight cannot judge this agent on this host.
    case failed(version: String, detail: String, obstacle: SandboxObstacle?)
    /// No version to run as a control (the agent's first content).
    case none
}

/// A preflight that failed, and what its control said (`status`'s `last_preflight_failure`).
public struct PreflightFailure: Sendable, Equatable, Codable {
    /// What the failure means, with its control: `BACKSTOP_REASON` of an undecided `preflight-failed`.
    public enum Verdict: String, Sendable, Codable, Equatable {
        /// The control passed: the candidate failed on its content and is quarantined.
        case quarantined
        /// The control failed too: the preflight cannot judge the agent on this host.
        case controlFailed = "control-failed"
        /// No version could be run as a control: nothing to compare with.
        case noControl = "no-control"
    }

    /// The version that failed.
    public var version: String
    /// How it failed.
    public var reason: FailureReason
    /// How it failed, in words ("exit code 1").
    public var detail: String
    /// What was made of it.
    public var verdict: Verdict
    /// The version run as the control, nil when there was none.
    public var controlVersion: String?
    /// How the control failed, nil when it passed or there was none.
    public var controlDetail: String?
    /// What the control's output named as being in its way.
    public var controlObstacle: SandboxObstacle?
    /// When it was decided.
    public var at: Date

    /// The record of a failed preflight judged against `control`.
    public init(version: String, reason: FailureReason, detail: String, control: PreflightControl, at: Date) {
        self.version = version
        self.reason = reason
        self.detail = detail
        self.at = at
        switch control {
        case .passed(let version):
            verdict = .quarantined
            controlVersion = version
        case .failed(let version, let detail, let obstacle):
            verdict = .controlFailed
            controlVersion = version
            controlDetail = detail
            controlObstacle = obstacle
        case .none:
            verdict = .noControl
        }
    }

    /// Why a preflight instance fails where the live agent may not: what it lacks that the
    /// control's output points at.
    public var difference: String {
        switch controlObstacle {
        case .network?, .addressInUse?:
            return "a preflight instance has a network of its own with only a loopback device: it cannot reach services of the host (127.0.0.1 included), and its ports are not the live agent's"
        case .readOnlyFileSystem?, .permissionDenied?:
            return "a preflight instance writes only to copies of read_write_paths and a /tmp of its own"
        case .serviceManager?:
            return "a preflight instance cannot reach systemd or the system D-Bus, as the live agent cannot without allow_service_manager"
        case .processLimit?:
            return "a preflight instance shares the process limit (tasks_max) of the live agent's user while the live agent runs"
        case nil:
            return "a preflight instance has a network of its own, copies of read_write_paths (pid files and locks included) and processes of its own, unlike the live agent"
        }
    }

    /// The `preflight-failed` decision's message.
    public func sentence(agent: String) -> String {
        let failed = "Content \(version) of agent \(agent) failed preflight: \(detail)"
        switch verdict {
        case .quarantined:
            return failed + "; the control, content \(controlVersion ?? "none"), passed the same preflight, so the failure is the content's; the live agent never loaded it."
        case .controlFailed:
            var text = failed + "; so did the control, content \(controlVersion ?? "none") (\(controlDetail ?? "failed")): the preflight cannot judge this agent on this host"
            if let controlObstacle { text += " (the control's output shows \(controlObstacle.explanation))" }
            return text + "; \(difference). Content \(version) is not quarantined: it is activated under normal probation, where the live agent judges it."
        case .noControl:
            return failed + "; no other version exists to run as a control, so the preflight cannot tell the content from the host. Content \(version) is not quarantined: it is activated under normal probation, where the live agent judges it."
        }
    }
}
