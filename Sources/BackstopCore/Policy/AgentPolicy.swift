import Foundation

/// The numbers that drive one agent's policy, taken from its `[[agent]]` table.
public struct PolicySettings: Sendable, Equatable {
    /// The agent's name, `name` in `[[agent]]`, for decisions and messages.
    public var agent: String
    /// `failure_threshold`: failures within the window that make a crash loop.
    public var failureThreshold: Int
    /// `failure_window_sec`.
    public var failureWindowSeconds: Double
    /// `probation_sec`: healthy running time a candidate needs to become known-good.
    public var probationSeconds: Double
    /// `restart_delay_ms`: the first backoff step; each further failure doubles it.
    public var restartDelayMilliseconds: Int
    /// `restart_delay_max_sec`: the backoff cap, and the healthy run that resets the backoff.
    public var restartDelayMaxSeconds: Double
    /// `start_timeout_sec`.
    public var startTimeoutSeconds: Double
    /// `watchdog_sec`, 0 = off.
    public var watchdogSeconds: Double
    /// `notify`: readiness is READY=1; otherwise one second alive.
    public var notify: Bool
    /// Whether `safe_mode_exec` is set; without it safe mode means "do not start".
    public var hasSafeModeExec: Bool

    /// Settings for `agent`; numbers not given take the TOML keys' defaults (SPEC.md).
    public init(
        agent: String, failureThreshold: Int = 3, failureWindowSeconds: Double = 120,
        probationSeconds: Double = 600, restartDelayMilliseconds: Int = 100, restartDelayMaxSeconds: Double = 30,
        startTimeoutSeconds: Double = 90, watchdogSeconds: Double = 0, notify: Bool = false,
        hasSafeModeExec: Bool = false
    ) {
        self.agent = agent
        self.failureThreshold = failureThreshold
        self.failureWindowSeconds = failureWindowSeconds
        self.probationSeconds = probationSeconds
        self.restartDelayMilliseconds = restartDelayMilliseconds
        self.restartDelayMaxSeconds = restartDelayMaxSeconds
        self.startTimeoutSeconds = startTimeoutSeconds
        self.watchdogSeconds = watchdogSeconds
        self.notify = notify
        self.hasSafeModeExec = hasSafeModeExec
    }

    /// With `notify = false` an agent counts as started once it has run this long.
    public static let startedAfterSeconds: Double = 1
}

/// Which command line the agent runs with.
public enum RunMode: String, Sendable, Codable, Equatable {
    /// `exec` on the active version.
    case normal
    /// `safe_mode_exec` on the active version.
    case safeMode = "safe-mode"
}

/// Why Backstop is stopping the agent; decides what happens when it has exited.
public enum StopIntent: Sendable, Equatable, Codable {
    /// The agent failed (hung, start timeout): count the failure once it is gone.
    case failure(FailureReason)
    /// Start it again on the (new) active version: an activation or rollback.
    case restart
    /// The daemon is stopping: leave it stopped.
    case shutdown
}

/// The life of one supervised agent: one explicit state, changed only in ``AgentPolicy``.
public enum AgentPhase: Sendable, Equatable, Codable {
    /// Not running: no active version yet, or the daemon stopped it.
    case stopped
    /// Spawn requested or process alive but not ready yet.
    case starting
    /// Ready (READY=1, or alive for a second without `notify`).
    case running
    /// Backstop sent a signal and waits for the exit.
    case stopping(StopIntent)
    /// Waiting out a restart delay after a failure.
    case backoff
    /// The escalation ladder ran out: left stopped until an operator acts.
    case givenUp
}

/// Timers the policy asks its host to run; each fires at most once per arming.
public enum PolicyTimer: String, Sendable, CaseIterable, Codable {
    /// `start_timeout_sec` after spawn (with `notify`).
    case startTimeout
    /// One second after spawn (without `notify`): the agent counts as started.
    case startedAfter
    /// `watchdog_sec` after the last heartbeat.
    case watchdog
    /// The end of the candidate's probation.
    case probation
    /// `restart_delay_max_sec` of healthy running: the backoff resets.
    case backoffReset
    /// The end of a restart delay.
    case restart
}

/// What the policy asks its host to do, in order.
public enum PolicyAction: Sendable, Equatable {
    /// Start the agent on the active version in this mode.
    case spawn(version: String, mode: RunMode)
    /// Send SIGTERM (or SIGABRT for a hang) to the agent's session; SIGKILL after the grace.
    case terminate(signal: Int32)
    /// Point the store's active link at this version; nil removes the link (nothing is active).
    case switchContent(version: String?)
    /// Arm (or re-arm) a timer for the given monotonic deadline.
    case arm(PolicyTimer, atMonotonicSeconds: Double)
    /// Disarm a timer.
    case disarm(PolicyTimer)
    /// Report a decision to the journal and the timeline.
    case record(Decision)
}

/// A failure the policy counted, kept while it is inside the failure window.
public struct FailureRecord: Sendable, Equatable, Codable {
    /// Why the run counted as a failure.
    public var reason: FailureReason
    /// The version that was active at the failure, nil when none was.
    public var version: String?
    /// When it happened on CLOCK_BOOTTIME, in seconds; compared only within the same boot.
    public var monotonicSeconds: Double
    /// Wall-clock time of the failure, for `status` and the state file.
    public var at: Date
    /// The exit code, nil when the process died by a signal or never ran.
    public var exitStatus: Int32?
    /// The number of the signal that ended the process, nil when it exited or never ran.
    public var signal: Int32?
    /// Whether a core was dumped; nil when the agent was not killed by a signal or the kernel could not tell.
    public var coreDumped: Bool?
}

/// Why the escalation ladder reached safe mode or gave up (`BACKSTOP_REASON`).
public enum EscalationReason: String, Sendable {
    /// The failing content has no known-good version behind it (or none intact).
    case noKnownGood = "no-known-good"
    /// Every known-good version crash-looped too.
    case knownGoodCrashLoops = "known-good-crash-loops"
    /// The agent crash-looped in safe mode.
    case safeModeCrashLoops = "safe-mode-crash-loop"
    /// Safe mode means "do not start": `safe_mode_exec` is empty.
    case noSafeModeExec = "no-safe-mode-exec"
    /// No content is left to run safe mode on.
    case noContent = "no-content"

    /// Part of a sentence: "no known-good version is left".
    public var explanation: String {
        switch self {
        case .noKnownGood: return "the failing content has no intact known-good version behind it"
        case .knownGoodCrashLoops: return "every known-good version crash-loops too"
        case .safeModeCrashLoops: return "it crash-loops in safe mode as well"
        case .noSafeModeExec: return "no safe_mode_exec is configured"
        case .noContent: return "no content is left to run"
        }
    }
}

/// The last rollback, for `status` and the degraded mark.
public struct RollbackRecord: Sendable, Equatable, Codable {
    /// The version rolled back from (`none` when nothing was active).
    public var from: String
    /// The known-good version made active.
    public var to: String
    /// `crash-loop`, `crash-loop-on-known-good`, `verification-failed` or `operator`.
    public var reason: String
    /// Wall-clock time of the rollback.
    public var at: Date
}

/// Errors of operator requests the policy refuses.
public enum PolicyError: Error, Equatable, CustomStringConvertible {
    case noSuchVersion(String)
    case versionQuarantined(String)
    case noKnownGood
    /// A rollback may only return to a known-good version (`activate` runs others).
    case notKnownGood(String)
    case alreadyActive(String)
    case notQuarantined(String)

    /// One sentence naming the version and what to do instead, for operators and Varlink error messages.
    public var description: String {
        switch self {
        case .noSuchVersion(let id): return "no content version \"\(id)\" is staged"
        case .versionQuarantined(let id):
            return "content version \"\(id)\" is quarantined; run `backstopctl release` first"
        case .noKnownGood: return "there is no other known-good version to roll back to"
        case .notKnownGood(let id):
            return "content version \"\(id)\" is not known-good; a rollback returns to known-good content (use `backstopctl activate` to try it)"
        case .alreadyActive(let id): return "content version \"\(id)\" is already active"
        case .notQuarantined(let id): return "content version \"\(id)\" is not quarantined"
        }
    }
}

/// The crash-loop, probation, backoff and escalation rules of one agent, with no I/O.
///
/// The host feeds events with the current ``Moment`` and carries out the returned
/// ``PolicyAction``s in order. Every rule is a pure function of the events and the
/// injected clock, so tests drive it without processes or sleeps (the model is
/// s6-supervise's state × event table).
public struct AgentPolicy: Sendable, Equatable {
    /// The agent's numbers from its `[[agent]]` table.
    public let settings: PolicySettings
    /// The agent's content versions and which is active.
    public private(set) var ledger: ContentLedger
    /// Where the agent's current run is: starting, running, in backoff, stopped, ...
    public private(set) var phase: AgentPhase = .stopped
    /// Whether the agent runs `exec` or, after escalation, `safe_mode_exec`.
    public private(set) var mode: RunMode = .normal
    /// Failures inside the sliding window, oldest first.
    public private(set) var failures: [FailureRecord] = []
    /// Failures since the last healthy run; drives the backoff.
    public private(set) var consecutiveFailures = 0
    /// Healthy seconds the candidate has accumulated before the current run.
    public private(set) var probationBankedSeconds: Double = 0
    /// When the current run became ready (monotonic), nil when not running.
    public private(set) var readySinceMonotonic: Double?
    /// The version the last spawn ran, which an exit is about even after an activation.
    public private(set) var runningVersion: String?
    /// Known-good versions already tried in the current escalation.
    public private(set) var escalationTried: [String] = []
    /// The last rollback, nil if none; with ``resetFailedAt`` it decides the degraded mark.
    public private(set) var lastRollback: RollbackRecord?
    /// When an operator last ran `reset-failed`: rollbacks before it no longer mark the agent degraded.
    public private(set) var resetFailedAt: Date?
    /// Deadlines of armed timers.
    public private(set) var timers: [PolicyTimer: Double] = [:]

    /// A policy for a stopped agent in normal mode, with no failures counted.
    public init(settings: PolicySettings, ledger: ContentLedger = ContentLedger()) {
        self.settings = settings
        self.ledger = ledger
    }

    // MARK: - Queries

    /// Failures inside the window ending at `now`.
    public func recentFailures(at now: Moment) -> [FailureRecord] {
        failures.filter { now.monotonicSeconds - $0.monotonicSeconds < settings.failureWindowSeconds }
    }

    /// The delay before the next restart after `consecutiveFailures` failures, in seconds:
    /// `restart_delay_ms` doubled per further failure, capped at `restart_delay_max_sec`.
    public static func restartDelaySeconds(consecutiveFailures: Int, settings: PolicySettings) -> Double {
        let first = Double(settings.restartDelayMilliseconds) / 1000
        let doublings = max(0, min(consecutiveFailures - 1, 62))
        return min(first * pow(2, Double(doublings)), settings.restartDelayMaxSeconds)
    }

    /// Healthy seconds of probation the candidate has at `now`.
    public func probationElapsedSeconds(at now: Moment) -> Double {
        probationBankedSeconds + (readySinceMonotonic.map { now.monotonicSeconds - $0 } ?? 0)
    }

    // MARK: - Events

    /// The daemon begins supervising: start the agent on its active version, unless
    /// it was given up before (that needs an operator).
    /// A backoff that was running when the daemon stopped is waited out first.
    public mutating func begin(restartDueMonotonicSeconds: Double? = nil, at now: Moment) -> [PolicyAction] {
        guard phase == .stopped else { return [] }
        if let due = restartDueMonotonicSeconds, due > now.monotonicSeconds, ledger.active != nil {
            phase = .backoff
            return [arm(.restart, at: due)]
        }
        return spawnActive(at: now)
    }

    /// Whether Backstop has signalled the agent and waits for its exit.
    public var isStopping: Bool {
        if case .stopping = phase { return true }
        return false
    }

    /// Whether an operator should look at this agent: it is in backoff, safe mode or
    /// given up, or it was rolled back since the last `reset-failed`.
    public var isDegraded: Bool {
        if phase == .backoff || phase == .givenUp || mode == .safeMode { return true }
        guard let lastRollback else { return false }
        return resetFailedAt.map { lastRollback.at > $0 } ?? true
    }

    /// The active version failed verification (its files no longer match their digest),
    /// at start or when the host was about to switch to it: quarantine it and roll back
    /// to the last known-good version (verified in turn by the host), or give up.
    public mutating func activeContentCorrupt(_ detail: String, at now: Moment) -> [PolicyAction] {
        guard let active = ledger.active else { return [] }
        ledger.quarantine(active, reason: "verification-failed", at: now.wall)
        // A rollback to this version never happened: status must not claim it.
        if lastRollback?.to == active { lastRollback = nil }
        var actions: [PolicyAction] = [.record(Decision(
            .contentQuarantined, agent: settings.agent, version: active, reason: "verification-failed",
            message: "Quarantined content \(active) of agent \(settings.agent): \(detail)."))]
        // The host dropped what it had not yet carried out for the damaged version:
        // a spawn still pending (phase starting) or the stop before a restart.
        let pendingStop: [PolicyAction] = phase == .stopping(.restart) ? [.terminate(signal: SIGTERM)] : []
        // Not back to a known-good version that already failed in this escalation.
        guard let knownGood = ledger.knownGoodNewestFirst.first(where: { !escalationTried.contains($0) }) else {
            ledger.deactivate()
            actions.append(.switchContent(version: nil))
            if !pendingStop.isEmpty { return actions + pendingStop }
            return actions + enterSafeMode(.noKnownGood, version: active, at: now)
        }
        forgetRunHistory()
        ledger.activate(knownGood)
        lastRollback = RollbackRecord(from: active, to: knownGood, reason: "verification-failed", at: now.wall)
        actions += [
            .switchContent(version: knownGood),
            .record(Decision(
                .rollback, agent: settings.agent, version: knownGood, previousVersion: active, reason: "verification-failed",
                message: "Rolled agent \(settings.agent) back from content \(active) to known-good \(knownGood) (verification-failed).")),
        ]
        if phase == .starting { return actions + [.spawn(version: knownGood, mode: mode)] }
        return actions + pendingStop
    }

    /// The process was created (fork and exec succeeded).
    public mutating func agentStarted(pid: Int32, at now: Moment) -> [PolicyAction] {
        guard phase == .starting else { return [] }
        var actions: [PolicyAction] = [
            .record(Decision(
                .agentStarted, agent: settings.agent, version: ledger.active,
                message: "Started agent \(settings.agent) (pid \(pid)) on content \(ledger.active ?? "none")\(mode == .safeMode ? " in safe mode" : "")."))
        ]
        if settings.notify {
            actions.append(arm(.startTimeout, at: now.monotonicSeconds + settings.startTimeoutSeconds))
        } else {
            actions.append(arm(.startedAfter, at: now.monotonicSeconds + PolicySettings.startedAfterSeconds))
        }
        return actions
    }

    /// READY=1 arrived on the agent's notify socket.
    public mutating func agentReady(at now: Moment) -> [PolicyAction] {
        guard settings.notify, phase == .starting else { return [] }
        return becomeReady(at: now)
    }

    /// WATCHDOG=1 arrived: push the hang deadline out.
    public mutating func heartbeat(at now: Moment) -> [PolicyAction] {
        guard settings.watchdogSeconds > 0, phase == .running else { return [] }
        return [arm(.watchdog, at: now.monotonicSeconds + settings.watchdogSeconds)]
    }

    /// The agent process ended (reaped with waitid(2)).
    public mutating func agentExited(_ termination: Termination, at now: Moment) -> [PolicyAction] {
        var actions = disarmRunTimers()
        bankProbation(at: now)
        let version = runningVersion ?? ledger.active
        switch phase {
        case .stopping(.restart):
            actions.append(recordExit(termination, version: version, reason: nil, expected: true, at: now))
            return actions + spawnActive(at: now)
        case .stopping(.shutdown):
            phase = .stopped
            actions.append(recordExit(termination, version: version, reason: nil, expected: true, at: now))
            return actions
        case .stopping(.failure(let reason)):
            actions.append(recordExit(termination, version: version, reason: reason, expected: false, at: now))
            return actions + countFailure(reason, termination: termination, at: now)
        case .starting, .running:
            if case .exited(0) = termination {
                // A clean exit is not a content failure; restart it after the usual delay.
                actions.append(recordExit(termination, version: version, reason: nil, expected: false, at: now))
                consecutiveFailures += 1
                return actions + scheduleRestart(at: now)
            }
            let reason: FailureReason = termination.signal != nil ? .crashed : .exited
            actions.append(recordExit(termination, version: version, reason: reason, expected: false, at: now))
            return actions + countFailure(reason, termination: termination, at: now)
        case .stopped, .backoff, .givenUp:
            return actions
        }
    }

    /// The agent could not be started at all (fork or exec failed).
    /// A stop requested meanwhile is honoured as if the process had exited.
    public mutating func spawnFailed(_ message: String, at now: Moment) -> [PolicyAction] {
        var actions = disarmRunTimers()
        switch phase {
        case .starting:
            actions.append(.record(Decision(
                .agentExited, agent: settings.agent, version: ledger.active, failures: recentFailures(at: now).count + 1,
                reason: FailureReason.execFailed.rawValue,
                message: "Agent \(settings.agent) could not be started: \(message).")))
            return actions + countFailure(.execFailed, termination: nil, at: now)
        case .stopping(.shutdown):
            phase = .stopped
            return actions
        case .stopping(.restart):
            return actions + spawnActive(at: now)
        case .stopping(.failure(let reason)):
            return actions + countFailure(reason, termination: nil, at: now)
        case .stopped, .running, .backoff, .givenUp:
            return actions
        }
    }

    /// A timer armed earlier reached its deadline. Stale firings (re-armed or disarmed
    /// since) are ignored.
    public mutating func timerFired(_ timer: PolicyTimer, deadline: Double, at now: Moment) -> [PolicyAction] {
        guard timers[timer] == deadline else { return [] }
        timers[timer] = nil
        switch timer {
        case .startTimeout:
            guard phase == .starting else { return [] }
            phase = .stopping(.failure(.startTimeout))
            return [
                .record(Decision(
                    .agentHung, agent: settings.agent, version: ledger.active, reason: FailureReason.startTimeout.rawValue,
                    message: "Agent \(settings.agent) did not become ready within \(Self.format(settings.startTimeoutSeconds)) s; stopping it.")),
                .terminate(signal: SIGABRT),
            ]
        case .startedAfter:
            guard phase == .starting else { return [] }
            return becomeReady(at: now)
        case .watchdog:
            guard phase == .running else { return [] }
            phase = .stopping(.failure(.hung))
            return [
                .record(Decision(
                    .agentHung, agent: settings.agent, version: ledger.active, reason: FailureReason.hung.rawValue,
                    message: "Agent \(settings.agent) missed its watchdog heartbeat for \(Self.format(settings.watchdogSeconds)) s; aborting it.")),
                .terminate(signal: SIGABRT),
            ]
        case .probation:
            guard phase == .running, let candidate = ledger.candidate else { return [] }
            ledger.promote(candidate, at: now.wall)
            probationBankedSeconds = 0
            return [.record(Decision(
                .contentPromoted, agent: settings.agent, version: candidate,
                message: "Content \(candidate) of agent \(settings.agent) passed probation and is now known-good."))]
        case .backoffReset:
            consecutiveFailures = 0
            return []
        case .restart:
            guard phase == .backoff else { return [] }
            return spawnActive(at: now)
        }
    }

    // MARK: - Operator requests

    /// Adds a staged version to the ledger (the store has copied and verified it).
    public mutating func staged(_ record: VersionRecord) {
        ledger.add(record)
    }

    /// Makes `id` the active version and (re)starts the agent on it. A staged version
    /// becomes the candidate and starts its probation; activating resets the
    /// escalation, since the operator has chosen what to run.
    /// - Throws: ``PolicyError/noSuchVersion(_:)``, ``PolicyError/versionQuarantined(_:)``.
    public mutating func activate(_ id: String, at now: Moment) throws(PolicyError) -> [PolicyAction] {
        guard let record = ledger.record(id) else { throw .noSuchVersion(id) }
        guard record.standing != .quarantined else { throw .versionQuarantined(id) }
        let previous = ledger.active
        forgetRunHistory()
        ledger.activate(id)
        escalationTried = []
        mode = .normal
        let probation = ledger.candidate == id
            ? "; probation \(Self.format(settings.probationSeconds)) s starts when it is ready" : ""
        var actions: [PolicyAction] = [
            .switchContent(version: id),
            .record(Decision(
                .contentActivated, agent: settings.agent, version: id, previousVersion: previous,
                message: "Activated content \(id) for agent \(settings.agent)\(previous.map { " (was \($0))" } ?? "")\(probation).")),
        ]
        actions += restartOnActive(at: now)
        return actions
    }

    /// Marks the candidate (or `id`) known-good now, ending its probation early.
    /// - Throws: ``PolicyError/noSuchVersion(_:)``, ``PolicyError/versionQuarantined(_:)``.
    public mutating func promote(_ id: String, at now: Moment) throws(PolicyError) -> [PolicyAction] {
        guard let record = ledger.record(id) else { throw .noSuchVersion(id) }
        guard record.standing != .quarantined else { throw .versionQuarantined(id) }
        guard record.standing != .knownGood else { return [] }
        ledger.promote(id, at: now.wall)
        var actions: [PolicyAction] = []
        if ledger.active == id {
            probationBankedSeconds = 0
            actions += disarm([.probation])
        }
        actions.append(.record(Decision(
            .contentPromoted, agent: settings.agent, version: id, reason: "operator",
            message: "Content \(id) of agent \(settings.agent) was promoted to known-good by an operator.")))
        return actions
    }

    /// Operator rollback: activate the known-good `target` (default: the newest
    /// known-good version that is not active). The replaced candidate goes back to
    /// staged, not quarantined.
    /// - Throws: ``PolicyError``: no such version, quarantined, not known-good, already active.
    public mutating func rollback(to target: String?, at now: Moment) throws(PolicyError) -> [PolicyAction] {
        guard let destination = target ?? ledger.knownGoodNewestFirst.first(where: { $0 != ledger.active })
        else { throw .noKnownGood }
        guard let record = ledger.record(destination) else { throw .noSuchVersion(destination) }
        guard record.standing != .quarantined else { throw .versionQuarantined(destination) }
        guard record.standing == .knownGood else { throw .notKnownGood(destination) }
        guard destination != ledger.active else { throw .alreadyActive(destination) }
        let from = ledger.active ?? "none"
        forgetRunHistory()
        ledger.activate(destination)
        lastRollback = RollbackRecord(from: from, to: destination, reason: "operator", at: now.wall)
        escalationTried = []
        mode = .normal
        var actions: [PolicyAction] = [
            .switchContent(version: destination),
            .record(Decision(
                .rollback, agent: settings.agent, version: destination, previousVersion: from, reason: "operator",
                message: "An operator rolled agent \(settings.agent) back from \(from) to \(destination).")),
        ]
        actions += restartOnActive(at: now)
        return actions
    }

    /// Lifts the quarantine of `id`.
    /// - Throws: ``PolicyError/noSuchVersion(_:)``, ``PolicyError/notQuarantined(_:)``.
    public mutating func release(_ id: String) throws(PolicyError) -> [PolicyAction] {
        guard let record = ledger.record(id) else { throw .noSuchVersion(id) }
        guard record.standing == .quarantined else { throw .notQuarantined(id) }
        ledger.release(id)
        return [.record(Decision(
            .contentReleased, agent: settings.agent, version: id, reason: "operator",
            message: "An operator released content \(id) of agent \(settings.agent) from quarantine; it can be activated again."))]
    }

    /// Clears the failure history and the escalation; an agent that was given up
    /// (or in safe mode) starts again on its active version.
    public mutating func resetFailed(at now: Moment) -> [PolicyAction] {
        failures = []
        consecutiveFailures = 0
        escalationTried = []
        resetFailedAt = now.wall
        guard phase == .givenUp || mode == .safeMode else { return [] }
        mode = .normal
        return restartOnActive(at: now)
    }

    /// The daemon is stopping: terminate the agent; it is left stopped.
    public mutating func shutdown(at now: Moment) -> [PolicyAction] {
        var actions = disarm(PolicyTimer.allCases)
        switch phase {
        case .starting, .running, .stopping:
            bankProbation(at: now)
            phase = .stopping(.shutdown)
            actions.append(.terminate(signal: SIGTERM))
        case .backoff:
            phase = .stopped
        case .stopped, .givenUp:
            break
        }
        return actions
    }

    // MARK: - Restoring persisted state

    /// Restores what survives a daemon restart within one boot (failures with their
    /// monotonic times, the backoff count, banked probation, the given-up state).
    /// The daemon's own restart is not an agent failure, so nothing is counted here.
    public mutating func restore(
        ledger: ContentLedger, failures: [FailureRecord], consecutiveFailures: Int,
        probationBankedSeconds: Double, givenUp: Bool, mode: RunMode, escalationTried: [String],
        lastRollback: RollbackRecord?, resetFailedAt: Date?
    ) {
        self.resetFailedAt = resetFailedAt
        self.ledger = ledger
        self.failures = failures
        self.consecutiveFailures = consecutiveFailures
        self.probationBankedSeconds = probationBankedSeconds
        self.phase = givenUp ? .givenUp : .stopped
        self.mode = mode
        self.escalationTried = escalationTried
        self.lastRollback = lastRollback
    }

    // MARK: - Rules

    private mutating func becomeReady(at now: Moment) -> [PolicyAction] {
        phase = .running
        readySinceMonotonic = now.monotonicSeconds
        var actions = disarm([.startTimeout, .startedAfter])
        actions.append(.record(Decision(
            .agentReady, agent: settings.agent, version: ledger.active,
            message: "Agent \(settings.agent) is ready on content \(ledger.active ?? "none").")))
        if settings.watchdogSeconds > 0 {
            actions.append(arm(.watchdog, at: now.monotonicSeconds + settings.watchdogSeconds))
        }
        actions.append(arm(.backoffReset, at: now.monotonicSeconds + settings.restartDelayMaxSeconds))
        if ledger.candidate != nil, mode == .normal {
            let remaining = max(0, settings.probationSeconds - probationBankedSeconds)
            actions.append(arm(.probation, at: now.monotonicSeconds + remaining))
        }
        return actions
    }

    /// Counts a failure; `termination` is nil when there was no process to end (exec failed).
    private mutating func countFailure(_ reason: FailureReason, termination: Termination?, at now: Moment) -> [PolicyAction] {
        failures = recentFailures(at: now)
        failures.append(FailureRecord(
            reason: reason, version: ledger.active, monotonicSeconds: now.monotonicSeconds, at: now.wall,
            exitStatus: termination?.exitStatus, signal: termination?.signal, coreDumped: termination?.coreDumped))
        consecutiveFailures += 1
        // A failure interrupts the healthy run that probation needs.
        probationBankedSeconds = 0
        // A program that cannot be executed fails the same way on every content: it is
        // shown and retried with backoff, never blamed on the content.
        guard failures.filter({ $0.reason != .execFailed }).count >= settings.failureThreshold else {
            return scheduleRestart(at: now)
        }
        return crashLoop(at: now)
    }

    private mutating func crashLoop(at now: Moment) -> [PolicyAction] {
        let count = failures.count
        let from = ledger.active
        failures = []
        consecutiveFailures = 0
        var actions: [PolicyAction] = [.record(Decision(
            .crashLoop, agent: settings.agent, version: from, failures: count,
            message: "Agent \(settings.agent) failed \(count) times within \(Self.format(settings.failureWindowSeconds)) s on content \(from ?? "none"): crash loop."))]
        if mode == .safeMode {
            return actions + giveUp(.safeModeCrashLoops, version: from, at: now)
        }
        if let candidate = ledger.candidate {
            ledger.quarantine(candidate, reason: "crash-loop", at: now.wall)
            actions.append(.record(Decision(
                .contentQuarantined, agent: settings.agent, version: candidate, failures: count, reason: "crash-loop",
                message: "Quarantined content \(candidate) of agent \(settings.agent): it crash-looped in probation.")))
            guard let knownGood = ledger.knownGood else {
                // The first version: nothing to roll back to, and a quarantined version is never left active.
                ledger.deactivate()
                actions.append(.switchContent(version: nil))
                return actions + enterSafeMode(.noKnownGood, version: candidate, at: now)
            }
            return actions + rollBack(from: candidate, to: knownGood, reason: "crash-loop", at: now)
        }
        if let from { escalationTried.append(from) }
        if let older = ledger.knownGoodNewestFirst.first(where: { !escalationTried.contains($0) }) {
            return actions + rollBack(from: from ?? "none", to: older, reason: "crash-loop-on-known-good", at: now)
        }
        return actions + enterSafeMode(.knownGoodCrashLoops, version: from, at: now)
    }

    private mutating func rollBack(from: String, to: String, reason: String, at now: Moment) -> [PolicyAction] {
        forgetRunHistory()
        ledger.activate(to)
        lastRollback = RollbackRecord(from: from, to: to, reason: reason, at: now.wall)
        return [
            .switchContent(version: to),
            .record(Decision(
                .rollback, agent: settings.agent, version: to, previousVersion: from, reason: reason,
                message: "Rolled agent \(settings.agent) back from content \(from) to known-good \(to) (\(reason)).")),
        ] + spawnActive(at: now)
    }

    private mutating func enterSafeMode(_ reason: EscalationReason, version: String?, at now: Moment) -> [PolicyAction] {
        guard settings.hasSafeModeExec, ledger.active != nil else {
            let next: EscalationReason = settings.hasSafeModeExec ? .noContent : .noSafeModeExec
            let decision = PolicyAction.record(Decision(
                .safeMode, agent: settings.agent, version: version, reason: reason.rawValue,
                message: "Agent \(settings.agent) enters safe mode without starting: \(reason.explanation), and \(next.explanation)."))
            return [decision] + giveUp(next, version: version, at: now)
        }
        mode = .safeMode
        return [.record(Decision(
            .safeMode, agent: settings.agent, version: version, reason: reason.rawValue,
            message: "Agent \(settings.agent) enters safe mode: \(reason.explanation); starting it with safe_mode_exec."))]
            + spawnActive(at: now)
    }

    private mutating func giveUp(_ reason: EscalationReason, version: String?, at now: Moment) -> [PolicyAction] {
        phase = .givenUp
        return [.record(Decision(
            .gaveUp, agent: settings.agent, version: version, reason: reason.rawValue,
            message: "Gave up on agent \(settings.agent): \(reason.explanation); it is left stopped, "
                + (ledger.active == nil
                    ? "until a version is released or staged and activated."
                    : "until the cause is fixed and `backstopctl reset-failed \(settings.agent)` is run.")))]
    }

    private mutating func scheduleRestart(at now: Moment) -> [PolicyAction] {
        phase = .backoff
        let delay = Self.restartDelaySeconds(consecutiveFailures: consecutiveFailures, settings: settings)
        return [arm(.restart, at: now.monotonicSeconds + delay)]
    }

    /// Restart the agent on the active version: now when nothing runs, after its exit otherwise.
    private mutating func restartOnActive(at now: Moment) -> [PolicyAction] {
        switch phase {
        case .starting, .running:
            bankProbation(at: now)
            var actions = disarmRunTimers()
            phase = .stopping(.restart)
            actions.append(.terminate(signal: SIGTERM))
            return actions
        case .stopping:
            phase = .stopping(.restart)
            return []
        case .stopped, .backoff, .givenUp:
            return disarm([.restart]) + spawnActive(at: now)
        }
    }

    private mutating func spawnActive(at now: Moment) -> [PolicyAction] {
        guard let active = ledger.active, ledger.record(active)?.standing != .quarantined else {
            phase = .stopped
            return []
        }
        phase = .starting
        runningVersion = active
        return [.spawn(version: active, mode: mode)]
    }

    /// Another version becomes active: the failures, the backoff and the healthy
    /// time of the runs so far belong to the version that ran, not to the next one.
    private mutating func forgetRunHistory() {
        failures = []
        consecutiveFailures = 0
        probationBankedSeconds = 0
        readySinceMonotonic = nil
    }

    private mutating func bankProbation(at now: Moment) {
        if let since = readySinceMonotonic, ledger.candidate != nil {
            probationBankedSeconds += now.monotonicSeconds - since
        }
        readySinceMonotonic = nil
    }

    /// The timers of one run, which end with it.
    private mutating func disarmRunTimers() -> [PolicyAction] {
        disarm([.startTimeout, .startedAfter, .watchdog, .probation, .backoffReset])
    }

    /// Forgets the armed ones among `list` and asks the host to cancel them.
    private mutating func disarm(_ list: [PolicyTimer]) -> [PolicyAction] {
        list.compactMap { timer in
            guard timers.removeValue(forKey: timer) != nil else { return nil }
            return .disarm(timer)
        }
    }

    private mutating func arm(_ timer: PolicyTimer, at deadline: Double) -> PolicyAction {
        timers[timer] = deadline
        return .arm(timer, atMonotonicSeconds: deadline)
    }

    /// The `agent-exited` decision; for a failure it carries the window's count including this one.
    private func recordExit(
        _ termination: Termination, version: String?, reason: FailureReason?, expected: Bool, at now: Moment
    ) -> PolicyAction {
        let content = version ?? "none"
        let message: String
        switch (expected, reason) {
        case (true, _): message = "Agent \(settings.agent) stopped as asked (\(termination.description))."
        case (false, nil): message = "Agent \(settings.agent) exited on its own with \(termination.description) on content \(content); restarting it."
        case (false, let reason?):
            message = "Agent \(settings.agent) failed (\(reason.rawValue)): \(termination.description) on content \(content)."
        }
        return .record(Decision(
            .agentExited, agent: settings.agent, version: version, exitStatus: termination.exitStatus,
            signal: termination.signal, coreDumped: termination.coreDumped,
            failures: reason == nil ? nil : recentFailures(at: now).count + 1,
            reason: reason?.rawValue,
            message: message))
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(format: "%.1f", seconds)
    }
}
