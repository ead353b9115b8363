import Foundation

/// The answer of `GetStatus` and the shape of `backstopctl status --json` (SPEC.md, backstopctl).
/// Optional fields that SPEC.md shows as `null` are written as `null`, not left out.
public struct StatusReport: Codable, Sendable, Equatable {
    public struct Daemon: Codable, Sendable, Equatable {
        public var running: Bool
        public var pid: Int32?
        public var version: String

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(running, forKey: .running)
            try container.encode(pid, forKey: .pid)
            try container.encode(version, forKey: .version)
        }
    }

    public struct Boot: Codable, Sendable, Equatable {
        /// 32 hex digits.
        public var id: String
        /// `pending` or `good`.
        public var state: String
        public var consecutiveFailed: Int

        enum CodingKeys: String, CodingKey {
            case id, state
            case consecutiveFailed = "consecutive_failed"
        }
    }

    public struct Content: Codable, Sendable, Equatable {
        public var active: String?
        public var knownGood: String?
        public var candidate: String?
        public var quarantined: [String]

        enum CodingKeys: String, CodingKey {
            case active, candidate, quarantined
            case knownGood = "known_good"
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(active, forKey: .active)
            try container.encode(knownGood, forKey: .knownGood)
            try container.encode(candidate, forKey: .candidate)
            try container.encode(quarantined, forKey: .quarantined)
        }
    }

    public struct Failure: Codable, Sendable, Equatable {
        public var reason: String
        public var version: String?
        public var at: Date
        public var exitStatus: Int32?
        public var signal: String?
        /// nil when not killed by a signal, or when the kernel cannot tell (before Linux 6.15).
        public var coreDumped: Bool?

        enum CodingKeys: String, CodingKey {
            case reason, version, at, signal
            case exitStatus = "exit_status"
            case coreDumped = "core_dumped"
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(reason, forKey: .reason)
            try container.encode(version, forKey: .version)
            try container.encode(at, forKey: .at)
            try container.encode(exitStatus, forKey: .exitStatus)
            try container.encode(signal, forKey: .signal)
            try container.encode(coreDumped, forKey: .coreDumped)
        }
    }

    public struct Failures: Codable, Sendable, Equatable {
        /// Failures inside the window now.
        public var recent: Int
        public var threshold: Int
        public var windowSec: Int
        /// Each of the recent failures, oldest first.
        public var list: [Failure]

        enum CodingKeys: String, CodingKey {
            case recent, threshold, list
            case windowSec = "window_sec"
        }
    }

    public struct Rollback: Codable, Sendable, Equatable {
        public var from: String
        public var to: String
        public var reason: String
        public var at: Date
    }

    public struct Agent: Codable, Sendable, Equatable {
        public var name: String
        /// `starting`, `running`, `backoff`, `safe-mode`, `given-up` or `stopped`.
        public var state: String
        public var pid: Int32?
        public var content: Content
        public var failures: Failures
        public var lastRollback: Rollback?
        /// Whether this agent makes `status` exit 1.
        public var degraded: Bool
        /// The agent's last `STATUS=` text, if it sent one.
        public var statusText: String?

        enum CodingKeys: String, CodingKey {
            case name, state, pid, content, failures, degraded
            case lastRollback = "last_rollback"
            case statusText = "status_text"
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(state, forKey: .state)
            try container.encode(pid, forKey: .pid)
            try container.encode(content, forKey: .content)
            try container.encode(failures, forKey: .failures)
            try container.encode(lastRollback, forKey: .lastRollback)
            try container.encode(degraded, forKey: .degraded)
            try container.encode(statusText, forKey: .statusText)
        }
    }

    public var daemon: Daemon
    public var boot: Boot
    public var agents: [Agent]

    /// `status`'s exit code (SPEC.md): 0 no agent degraded, 1 degraded, 3 daemon not running.
    public var exitCode: Int32 {
        guard daemon.running else { return 3 }
        return agents.contains(where: \.degraded) ? 1 : 0
    }
}

extension StatusReport.Agent {
    /// The status of one agent from its persisted state and, when the daemon runs, its live phase.
    /// - Parameters:
    ///   - state: the `state` word (SPEC.md's list).
    ///   - recentFailures: failures inside the window now.
    public init(
        name: String, state: String, pid: Int32?, ledger: ContentLedger, recentFailures: [FailureRecord],
        settings: PolicySettings, lastRollback: RollbackRecord?, degraded: Bool, statusText: String?
    ) {
        self.name = name
        self.state = state
        self.pid = pid
        content = StatusReport.Content(
            active: ledger.active, knownGood: ledger.knownGood, candidate: ledger.candidate, quarantined: ledger.quarantined)
        failures = StatusReport.Failures(
            recent: recentFailures.count, threshold: settings.failureThreshold,
            windowSec: Int(settings.failureWindowSeconds),
            list: recentFailures.map {
                StatusReport.Failure(
                    reason: $0.reason.rawValue, version: $0.version, at: $0.at, exitStatus: $0.exitStatus,
                    signal: $0.signal.map(SignalName.of), coreDumped: $0.coreDumped)
            })
        self.lastRollback = lastRollback.map { StatusReport.Rollback(from: $0.from, to: $0.to, reason: $0.reason, at: $0.at) }
        self.degraded = degraded
        self.statusText = statusText
    }
}

extension AgentPolicy {
    /// The `state` word of SPEC.md for the current phase and mode.
    public var stateWord: String {
        switch phase {
        case .givenUp: return "given-up"
        case _ where mode == .safeMode: return "safe-mode"
        case .starting, .stopping(.restart): return "starting"
        case .running: return "running"
        case .backoff, .stopping(.failure): return "backoff"
        case .stopped, .stopping(.shutdown): return "stopped"
        }
    }
}
