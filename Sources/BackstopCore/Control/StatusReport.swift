import Foundation

/// The answer of `GetStatus` and the shape of `backstopctl status --json` (SPEC.md, backstopctl).
/// Optional fields that SPEC.md shows as `null` are written as `null`, not left out.
public struct StatusReport: Codable, Sendable, Equatable {
    /// The `daemon` object of `status --json`.
    public struct Daemon: Codable, Sendable, Equatable {
        /// `running`: false when backstopctl read the state files because no daemon answered.
        public var running: Bool
        /// `pid`: the daemon's process ID, null when it is not running.
        public var pid: Int32?
        /// `version`: the daemon's ``Backstop/version`` (backstopctl's own when the daemon is not running).
        public var version: String
        /// `configuration`: the file the daemon reads and what runs; absent when the daemon is not running.
        public var configuration: ConfigurationStatus?

        /// A daemon's status; `configuration` only for a running one.
        public init(running: Bool, pid: Int32?, version: String, configuration: ConfigurationStatus? = nil) {
            self.running = running
            self.pid = pid
            self.version = version
            self.configuration = configuration
        }

        /// Writes a missing `pid` as an explicit `null`, as SPEC.md shows it.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(running, forKey: .running)
            try container.encode(pid, forKey: .pid)
            try container.encode(version, forKey: .version)
            try container.encodeIfPresent(configuration, forKey: .configuration)
        }
    }

    /// The `configuration` object of `daemon`: `{"path": ..., "running": "file" | "last-good" |
    /// "previous", "error": "FILE:LINE: KEY: message" | null}`. With an error the daemon is
    /// degraded: the file does not load, and what runs is the last copy of it that did
    /// (`last-good`, at start) or the configuration a failed reload kept (`previous`).
    public struct ConfigurationStatus: Codable, Sendable, Equatable {
        /// `path`: the configuration file.
        public var path: String
        /// `running`: what the daemon runs with.
        public var running: ConfigurationSource
        /// `error`: why the file does not load; null when what runs is the file as it is.
        public var error: String?

        /// The status of `path`, running `running`, with the file's `error`.
        public init(path: String, running: ConfigurationSource, error: String?) {
            self.path = path
            self.running = running
            self.error = error
        }

        /// Writes a missing `error` as an explicit `null`.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(path, forKey: .path)
            try container.encode(running, forKey: .running)
            try container.encode(error, forKey: .error)
        }
    }

    /// What a running daemon's configuration came from.
    public enum ConfigurationSource: String, Codable, Sendable, Equatable {
        /// The configuration file, as it is now.
        case file
        /// The last copy of the file that loaded (``LastGoodConfiguration``): the file did not load at start.
        case lastGood = "last-good"
        /// The configuration loaded before a reload whose file did not load.
        case previous
    }

    /// The `boot` object of `status --json`: the current boot.
    public struct Boot: Codable, Sendable, Equatable {
        /// 32 hex digits.
        public var id: String
        /// `pending` or `good`.
        public var state: String
        /// `consecutive_failed`: failed boots in a row just before this one.
        public var consecutiveFailed: Int

        enum CodingKeys: String, CodingKey {
            case id, state
            case consecutiveFailed = "consecutive_failed"
        }
    }

    /// An agent's `content` object: its active, known-good, candidate and quarantined versions.
    public struct Content: Codable, Sendable, Equatable {
        /// `active`: the version the active link names, null when none.
        public var active: String?
        /// `known_good`: the last known-good version, the one a rollback returns to; null when none.
        public var knownGood: String?
        /// `candidate`: the active version when it is in probation, else null.
        public var candidate: String?
        /// `quarantined`: quarantined version ids in staging order.
        public var quarantined: [String]

        enum CodingKeys: String, CodingKey {
            case active, candidate, quarantined
            case knownGood = "known_good"
        }

        /// Writes missing versions as explicit `null`s, as SPEC.md shows them.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(active, forKey: .active)
            try container.encode(knownGood, forKey: .knownGood)
            try container.encode(candidate, forKey: .candidate)
            try container.encode(quarantined, forKey: .quarantined)
        }
    }

    /// One entry of `failures.list`: a failure inside the window.
    public struct Failure: Codable, Sendable, Equatable {
        /// `reason`: a ``FailureReason`` value, e.g. `crashed`, `exited`, `hung`, `start-timeout`.
        public var reason: String
        /// `attribution`: what the failure says about the content, an ``Attribution`` value
        /// (`content` counts toward the crash loop; `restart-only`, `configuration` do not).
        public var attribution: String
        /// `version`: the version active at the failure, null when none was.
        public var version: String?
        /// `at`: when it failed, RFC 3339.
        public var at: Date
        /// `exit_status`: the exit code, null when the agent died by a signal or never ran.
        public var exitStatus: Int32?
        /// `signal`: the signal's name, e.g. `SIGSEGV`, null when none.
        public var signal: String?
        /// nil when not killed by a signal, or when the kernel cannot tell (before Linux 6.15).
        public var coreDumped: Bool?
        /// `obstacle`: what the agent's output named as being in its way, a ``SandboxObstacle``
        /// value (`read-only-file-system`, `permission-denied`, `process-limit`, ...), null when none.
        public var obstacle: String?

        enum CodingKeys: String, CodingKey {
            case reason, attribution, version, at, signal, obstacle
            case exitStatus = "exit_status"
            case coreDumped = "core_dumped"
        }

        /// Writes missing fields as explicit `null`s, consistent with the `null`s SPEC.md shows.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(reason, forKey: .reason)
            try container.encode(attribution, forKey: .attribution)
            try container.encode(version, forKey: .version)
            try container.encode(at, forKey: .at)
            try container.encode(exitStatus, forKey: .exitStatus)
            try container.encode(signal, forKey: .signal)
            try container.encode(coreDumped, forKey: .coreDumped)
            try container.encode(obstacle, forKey: .obstacle)
        }
    }

    /// An agent's `first_content_failure` object: it crash-loops on content that has no
    /// known-good version to compare it with, so the content is not quarantined.
    public struct FirstContentFailing: Codable, Sendable, Equatable {
        /// `version`: the content it fails on.
        public var version: String
        /// `failure`: how it fails, e.g. `exited` or `crashed SIGSEGV`.
        public var failure: String
        /// `obstacle`: what its output named as being in its way, null when nothing.
        public var obstacle: String?
        /// `setting`: the `[agent.sandbox]` key to open for that obstacle, null without one.
        public var setting: String?
        /// `since`: when the crash loop was first seen, RFC 3339.
        public var since: Date

        /// Writes missing fields as explicit `null`s.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(version, forKey: .version)
            try container.encode(failure, forKey: .failure)
            try container.encode(obstacle, forKey: .obstacle)
            try container.encode(setting, forKey: .setting)
            try container.encode(since, forKey: .since)
        }
    }

    /// An agent's `last_preflight_failure` object: the last preflight that failed, and its control.
    public struct PreflightFailed: Codable, Sendable, Equatable {
        /// `version`: the version that failed its preflight.
        public var version: String
        /// `reason`: a ``FailureReason`` value.
        public var reason: String
        /// `detail`: how it failed, with its last line of output.
        public var detail: String
        /// `verdict`: `quarantined` (the control passed), `control-failed` or `no-control`
        /// (the preflight cannot judge the agent here; the version was activated under probation).
        public var verdict: String
        /// `control`: the version run as the control, null when there was none.
        public var control: String?
        /// `control_detail`: how the control failed, null when it passed or there was none.
        public var controlDetail: String?
        /// `message`: the `preflight-failed` decision's sentence, with the reason the preflight cannot judge.
        public var message: String
        /// `at`: when, RFC 3339.
        public var at: Date

        enum CodingKeys: String, CodingKey {
            case version, reason, detail, verdict, control, message, at
            case controlDetail = "control_detail"
        }

        /// Writes missing fields as explicit `null`s.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(version, forKey: .version)
            try container.encode(reason, forKey: .reason)
            try container.encode(detail, forKey: .detail)
            try container.encode(verdict, forKey: .verdict)
            try container.encode(control, forKey: .control)
            try container.encode(controlDetail, forKey: .controlDetail)
            try container.encode(message, forKey: .message)
            try container.encode(at, forKey: .at)
        }
    }

    /// An agent's `failures` object: the failures inside the window.
    public struct Failures: Codable, Sendable, Equatable {
        /// Failures inside the window now that count toward a crash loop (attribution `content`).
        public var recent: Int
        /// `threshold`: `failure_threshold`, failures in the window that make a crash loop.
        public var threshold: Int
        /// `window_sec`: `failure_window_sec`, the window's length in seconds.
        public var windowSec: Int
        /// Every failure inside the window, whatever its attribution, oldest first.
        public var list: [Failure]

        enum CodingKeys: String, CodingKey {
            case recent, threshold, list
            case windowSec = "window_sec"
        }
    }

    /// An agent's `probation` object: how far the candidate is.
    public struct Probation: Codable, Sendable, Equatable {
        /// `elapsed_sec`: healthy seconds so far (whole seconds).
        public var elapsedSec: Int
        /// `required_sec`: `probation_sec`.
        public var requiredSec: Int

        enum CodingKeys: String, CodingKey {
            case elapsedSec = "elapsed_sec"
            case requiredSec = "required_sec"
        }
    }

    /// An agent's `last_rollback` object.
    public struct Rollback: Codable, Sendable, Equatable {
        /// `from`: the version rolled back from.
        public var from: String
        /// `to`: the known-good version made active.
        public var to: String
        /// `reason`: `crash-loop`, `crash-loop-on-known-good`, `verification-failed` or `operator`.
        public var reason: String
        /// `at`: when it happened, RFC 3339.
        public var at: Date
    }

    /// An agent's `escalation` object: the ladder step it is on and the evidence that put it there.
    public struct Escalation: Codable, Sendable, Equatable {
        /// `step`: `safe-mode` or `given-up`.
        public var step: String
        /// `reason`: the `BACKSTOP_REASON` of the `safe-mode` or `gave-up` decision, e.g. `known-good-crash-loops`.
        public var reason: String
        /// `explanation`: the reason in words.
        public var explanation: String
        /// `evidence`: what was observed, e.g. `3 failures within 120 s on content v1 (crashed SIGSEGV)`.
        public var evidence: String
        /// `version`: the version the evidence is about, null when none was active.
        public var version: String?
        /// `at`: when the step was taken, RFC 3339.
        public var at: Date

        /// Writes a missing `version` as an explicit `null`.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(step, forKey: .step)
            try container.encode(reason, forKey: .reason)
            try container.encode(explanation, forKey: .explanation)
            try container.encode(evidence, forKey: .evidence)
            try container.encode(version, forKey: .version)
            try container.encode(at, forKey: .at)
        }
    }

    /// An agent's `boot_loop` object: a boot loop with no candidate content to roll back,
    /// reported while the agent keeps running (`boot_loop_stops_agent` off), until `reset-failed`.
    public struct BootLoop: Codable, Sendable, Equatable {
        /// `failed_boots`: failed boots in a row with the agent on `version`.
        public var failedBoots: Int
        /// `version`: the content the agent ran in them.
        public var version: String
        /// `at`: when it was judged, RFC 3339.
        public var at: Date

        enum CodingKeys: String, CodingKey {
            case version, at
            case failedBoots = "failed_boots"
        }
    }

    /// One element of `agents`: an agent's state, content, failures and last rollback.
    public struct Agent: Codable, Sendable, Equatable {
        /// `name`: the agent's name, `name` in `[[agent]]`.
        public var name: String
        /// `starting`, `running`, `backoff`, `safe-mode`, `given-up` or `stopped`.
        public var state: String
        /// `pid`: the agent's process ID, null when it is not running.
        public var pid: Int32?
        /// `content`: the agent's versions.
        public var content: Content
        /// `failures`: recent failures and the crash-loop threshold.
        public var failures: Failures
        /// `last_rollback`: the last rollback, null if none.
        public var lastRollback: Rollback?
        /// Whether this agent makes `status` exit 1.
        public var degraded: Bool
        /// `degraded_reason`: why, e.g. `rollback did not help`; for an agent given up or in
        /// safe mode the ladder step, its reason and its evidence; null when not degraded.
        public var degradedReason: String?
        /// `escalation`: why the agent is given up or in safe mode; null when it is neither.
        public var escalation: Escalation?
        /// `boot_loop`: a boot loop reported with no candidate to roll back; null when none.
        public var bootLoop: BootLoop?
        /// `stopped_by_operator`: `backstopctl stop` holds it until `backstopctl start`.
        public var stoppedByOperator: Bool
        /// `probation`: the candidate's progress, null when there is no candidate.
        public var probation: Probation?
        /// The agent's last `STATUS=` text, if it sent one.
        public var statusText: String?
        /// `first_content_failure`: the agent crash-loops on content with nothing to compare it with; null when not.
        public var firstContentFailure: FirstContentFailing?
        /// `last_preflight_failure`: the last preflight that failed and its control; null when none did.
        public var lastPreflightFailure: PreflightFailed?

        enum CodingKeys: String, CodingKey {
            case name, state, pid, content, failures, degraded
            case firstContentFailure = "first_content_failure"
            case lastPreflightFailure = "last_preflight_failure"
            case lastRollback = "last_rollback"
            case degradedReason = "degraded_reason"
            case escalation
            case bootLoop = "boot_loop"
            case stoppedByOperator = "stopped_by_operator"
            case probation
            case statusText = "status_text"
        }

        /// Writes missing fields as explicit `null`s, as SPEC.md shows `candidate` and `last_rollback`.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(state, forKey: .state)
            try container.encode(pid, forKey: .pid)
            try container.encode(content, forKey: .content)
            try container.encode(failures, forKey: .failures)
            try container.encode(lastRollback, forKey: .lastRollback)
            try container.encode(degraded, forKey: .degraded)
            try container.encode(degradedReason, forKey: .degradedReason)
            try container.encode(escalation, forKey: .escalation)
            try container.encode(bootLoop, forKey: .bootLoop)
            try container.encode(stoppedByOperator, forKey: .stoppedByOperator)
            try container.encode(probation, forKey: .probation)
            try container.encode(statusText, forKey: .statusText)
            try container.encode(firstContentFailure, forKey: .firstContentFailure)
            try container.encode(lastPreflightFailure, forKey: .lastPreflightFailure)
        }
    }

    /// `daemon`: whether backstopd runs, its pid and version.
    public var daemon: Daemon
    /// `boot`: the current boot and whether it is good yet.
    public var boot: Boot
    /// `agents`: every configured agent, or the one asked for (by name from the daemon, in file order from the state files).
    public var agents: [Agent]

    /// `status`'s exit code (SPEC.md): 0 no agent degraded, 1 degraded (an agent, or the daemon
    /// running on a configuration other than its file), 3 daemon not running.
    public var exitCode: Int32 {
        guard daemon.running else { return 3 }
        return agents.contains(where: \.degraded) || daemon.configuration?.error != nil ? 1 : 0
    }
}

extension StatusReport.Agent {
    /// The status of one agent from its policy: the live one in the daemon, or one
    /// restored from the state file when the daemon is not running.
    /// - Parameters:
    ///   - pid: the agent's process, nil when none runs.
    ///   - statusText: the agent's last `STATUS=`.
    ///   - now: the instant the failure window ends at.
    public init(policy: AgentPolicy, pid: Int32?, statusText: String?, at now: Moment) {
        let ledger = policy.ledger
        let settings = policy.settings
        name = settings.agent
        state = policy.stateWord
        self.pid = pid
        content = StatusReport.Content(
            active: ledger.active, knownGood: ledger.knownGood, candidate: ledger.candidate, quarantined: ledger.quarantined)
        failures = StatusReport.Failures(
            recent: policy.countedFailures(at: now).count, threshold: settings.failureThreshold,
            windowSec: Int(settings.failureWindowSeconds),
            list: policy.recentFailures(at: now).map {
                StatusReport.Failure(
                    reason: $0.reason.rawValue, attribution: policy.attribution(of: $0).rawValue,
                    version: $0.version, at: $0.at, exitStatus: $0.exitStatus,
                    signal: $0.signal.map(SignalName.of), coreDumped: $0.coreDumped, obstacle: $0.obstacle?.rawValue)
            })
        lastRollback = policy.lastRollback.map { StatusReport.Rollback(from: $0.from, to: $0.to, reason: $0.reason.rawValue, at: $0.at) }
        degraded = policy.isDegraded
        degradedReason = policy.degradedReason
        escalation = policy.currentEscalation.map {
            StatusReport.Escalation(
                step: $0.step.rawValue, reason: $0.reason.rawValue, explanation: $0.explanation, evidence: $0.evidence,
                version: $0.version, at: $0.at)
        }
        bootLoop = policy.reportedBootLoop.map { StatusReport.BootLoop(failedBoots: $0.failedBoots, version: $0.version, at: $0.at) }
        stoppedByOperator = policy.operatorStopped
        probation = ledger.candidate.map { _ in
            StatusReport.Probation(
                elapsedSec: Int(min(policy.probationElapsedSeconds(at: now), settings.probationSeconds)),
                requiredSec: Int(settings.probationSeconds))
        }
        self.statusText = statusText
        firstContentFailure = policy.escalationState.firstContentFailure.map {
            StatusReport.FirstContentFailing(
                version: $0.version, failure: $0.failure, obstacle: $0.obstacle?.rawValue, setting: $0.obstacle?.setting, since: $0.since)
        }
        lastPreflightFailure = policy.lastPreflightFailure.map {
            StatusReport.PreflightFailed(
                version: $0.version, reason: $0.reason.rawValue, detail: $0.detail, verdict: $0.verdict.rawValue,
                control: $0.controlVersion, controlDetail: $0.controlDetail, message: $0.sentence(agent: settings.agent), at: $0.at)
        }
    }
}

extension AgentPolicy {
    /// The `state` word of SPEC.md for the current phase and mode.
    public var stateWord: String {
        switch phase {
        case .givenUp: return "given-up"
        case _ where mode == .safeMode: return "safe-mode"
        case .starting, .restarting, .stopping(.restart): return "starting"
        case .running: return "running"
        case .backoff, .daemonized, .stopping(.failure), .stopping(.readyCheckCannotRun): return "backoff"
        case .stopped, .awaitingDependency, .stopping(.shutdown), .stopping(.operatorStop): return "stopped"
        }
    }
}
