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
    /// `boot_loop_stops_agent`: a boot loop with no candidate to roll back walks the escalation
    /// ladder; without it, it is reported and the agent keeps running.
    public var bootLoopStopsAgent: Bool
    /// `clean_exit_is_failure`: a clean exit (code 0) counts against the content like any other exit.
    public var cleanExitIsFailure: Bool
    /// Whether `ready_check_exec` is set: the agent is ready only once it succeeds.
    public var hasReadyCheck: Bool
    /// `health_check_interval_sec` when `health_check_exec` is set, nil without health checks.
    public var healthCheckIntervalSeconds: Double?
    /// `health_check_timeout_sec`: a probe still running after this long is killed and counts as failed.
    public var healthCheckTimeoutSeconds: Double
    /// `health_check_failures`: failed health checks in a row that make one failure.
    public var healthCheckFailures: Int
    /// Whether the program the agent runs comes from its content (`{content}` in the first word of `exec`).
    public var programIsContent: Bool
    /// `success_exit_status`: ends besides exit code 0 that are clean exits.
    public var successExitStatus: SuccessExitStatus
    /// `clean_exit`: whether a clean exit restarts the agent with backoff or is its normal life.
    public var cleanExit: CleanExit

    /// Settings for `agent`; numbers not given take the TOML keys' defaults (SPEC.md, README.md).
    public init(
        agent: String, failureThreshold: Int = 3, failureWindowSeconds: Double = 120,
        probationSeconds: Double = 600, restartDelayMilliseconds: Int = 100, restartDelayMaxSeconds: Double = 30,
        startTimeoutSeconds: Double = 90, watchdogSeconds: Double = 0, notify: Bool = false,
        hasSafeModeExec: Bool = false, bootLoopStopsAgent: Bool = false, cleanExitIsFailure: Bool = false, hasReadyCheck: Bool = false,
        healthCheckIntervalSeconds: Double? = nil, healthCheckTimeoutSeconds: Double = 10, healthCheckFailures: Int = 3,
        programIsContent: Bool = false, successExitStatus: SuccessExitStatus = SuccessExitStatus(),
        cleanExit: CleanExit = .backoff
    ) {
        self.cleanExit = cleanExit
        self.programIsContent = programIsContent
        self.successExitStatus = successExitStatus
        self.cleanExitIsFailure = cleanExitIsFailure
        self.hasReadyCheck = hasReadyCheck
        self.healthCheckIntervalSeconds = healthCheckIntervalSeconds
        self.healthCheckTimeoutSeconds = healthCheckTimeoutSeconds
        self.healthCheckFailures = healthCheckFailures
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
        self.bootLoopStopsAgent = bootLoopStopsAgent
    }

    /// With neither `notify` nor `ready_check_exec` an agent counts as started once it has run this long.
    public static let startedAfterSeconds: Double = 1

    /// The pause after the first failed ready check, in seconds; it doubles per failed
    /// check up to ``readyCheckRetryMaxSeconds``.
    public static let readyCheckRetrySeconds: Double = 0.1
    /// The longest pause between two ready checks, in seconds.
    public static let readyCheckRetryMaxSeconds: Double = 2

    /// The attribution of `reason` under these settings (`clean_exit_is_failure`, and
    /// whether the program is part of the content).
    public func attribution(of reason: FailureReason) -> Attribution {
        reason.attribution(cleanExitIsFailure: cleanExitIsFailure, programIsContent: programIsContent)
    }
}

/// `clean_exit`: what a clean exit (code 0, or one of `success_exit_status`) means for an
/// agent. It never counts against the content either way (unless `clean_exit_is_failure`).
public enum CleanExit: String, Sendable, Equatable, CaseIterable {
    /// `"backoff"`, the default: an end nobody expected; the agent is restarted with backoff
    /// (each clean exit in a row doubles the delay) and shows degraded while it waits.
    case backoff
    /// `"normal"`: the agent ends by design (a job that runs, exits and is run again, as
    /// systemd's `Restart=always`): it is started again after `restart_delay_ms`, the delay
    /// never grows, and it does not show degraded.
    case normal
}

/// How a probe run ended.
public enum ProbeResult: Sendable, Equatable {
    /// It exited 0 in time.
    case passed
    /// A non-zero exit, a signal or a timeout, as described.
    case failed(String)
    /// Its program could not be executed (missing, not executable): a configuration error, not the agent's.
    case couldNotRun(String)
}

/// A check Backstop runs beside the agent (`ready_check_exec`, `health_check_exec`).
public enum Probe: String, Sendable, Equatable, Codable {
    /// `ready_check_exec`: run after each start until it succeeds.
    case ready
    /// `health_check_exec`: run every `health_check_interval_sec` while the agent is ready.
    case health

    /// The `SYSLOG_IDENTIFIER` the check's stderr goes to the journal under, `<agent>-ready-check`
    /// or `<agent>-health-check`: its output is not the agent's own.
    public func journalIdentifier(agent: String) -> String {
        "\(agent)-\(rawValue)-check"
    }
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
    /// An operator ran `backstopctl stop`: leave it stopped until `backstopctl start`.
    case operatorStop
    /// `ready_check_exec` cannot be run, so readiness cannot be judged: an `exec-failed`
    /// configuration error, whatever the content.
    case readyCheckCannotRun
}

/// The life of one supervised agent: one explicit state, changed only in ``AgentPolicy``.
public enum AgentPhase: Sendable, Equatable, Codable {
    /// Not running: no active version yet, or the daemon stopped it.
    case stopped
    /// Spawn requested or process alive but not ready yet, with what arrived of its readiness.
    case starting(StartingRun)
    /// Ready (READY=1, or alive for a second without `notify`), with its health checks.
    case running(ReadyRun)
    /// Backstop sent a signal and waits for the exit.
    case stopping(StopIntent)
    /// Waiting out a restart delay after a failure.
    case backoff
    /// Waiting `restart_delay_ms` after a clean exit that is the agent's normal life
    /// (`clean_exit = "normal"`): not a failure, and no growing delay.
    case restarting
    /// The program exited 0 and left processes running in the background: it is not
    /// started again (that would run two) until they are gone.
    case daemonized
    /// The escalation ladder ran out: left stopped until an operator acts.
    case givenUp
    /// systemd stopped the agent's unit along with a unit it requires (named here), not an
    /// operator and not a failure: started again once that unit is active again.
    case awaitingDependency(String)

    /// Whether this is ``starting(_:)``, whatever arrived of its readiness.
    public var isStarting: Bool {
        if case .starting = self { return true }
        return false
    }

    /// Whether this is ``running(_:)``, whatever its health checks said.
    public var isRunning: Bool {
        if case .running = self { return true }
        return false
    }

    /// Whether this is ``awaitingDependency(_:)``, whichever unit it waits for.
    public var isAwaitingDependency: Bool {
        if case .awaitingDependency = self { return true }
        return false
    }
}

/// What happens to one supervised agent, fed to ``AgentPolicy/handle(_:at:)`` with the time it happened.
public enum AgentEvent: Sendable, Equatable {
    /// The daemon begins supervising: the agent starts on its active version, unless it was
    /// given up before (that needs an operator). A backoff that was running when the daemon
    /// stopped (its end on CLOCK_BOOTTIME, from the state file) is waited out first.
    case begin(restartDueMonotonicSeconds: Double? = nil)
    /// The active version failed verification (its files no longer match their digest), as
    /// described, at start or when the host was about to switch to it.
    case activeContentCorrupt(String)
    /// The process was created (fork and exec succeeded), or a unit began to activate; `pid`
    /// is 0 while a unit has no main process yet (its `ExecStartPre=` runs).
    case agentStarted(pid: Int32)
    /// READY=1 arrived on the agent's notify socket.
    case agentReady
    /// A probe the policy asked for (``PolicyAction/probe(_:timeoutSeconds:)``) ended.
    case probeFinished(Probe, result: ProbeResult)
    /// WATCHDOG=1 arrived on the agent's notify socket.
    case heartbeat
    /// The agent process ended (reaped with waitid(2)), or its unit went inactive.
    /// - oomKill: the kernel log records an OOM kill of the process, and whose.
    /// - memoryRlimitBytes: `memory_max` when it held the run only as RLIMIT_DATA (no cgroup):
    ///   an allocation past it fails inside the agent, which cannot be told from other
    ///   failures, so the exit's message names the limit.
    /// - survivors: processes of the agent's session still alive after it ended (the
    ///   host leaves them running only when this makes the exit `daemonized`).
    /// - reason: the reason when the runner knows better than the termination does
    ///   (systemd's `Result=timeout` while starting is a start timeout, `Result=watchdog` a hang).
    /// - obstacle: what the end of the agent's stderr names as being in its way (``SandboxObstacle/find(in:)``).
    case agentExited(
        Termination, oomKill: OOMKill? = nil, memoryRlimitBytes: UInt64? = nil, survivors: [Int32] = [],
        reason: FailureReason? = nil, obstacle: SandboxObstacle? = nil)
    /// systemd stopped the agent's unit because the named unit, which it requires
    /// (`Requires=`, `BindsTo=`, `Requisite=`, `PartOf=`), was stopped or failed: neither an
    /// operator's stop nor a failure of the agent. How the main process ended, if it ran.
    case stoppedWithDependency(String, termination: Termination?)
    /// The unit the agent waits for (``AgentPhase/awaitingDependency(_:)``) is active again.
    case dependencyActive
    /// The processes a `daemonized` agent left running have all exited (or were stopped).
    case backgroundProcessesExited
    /// The agent could not be started at all (fork or exec failed), as described.
    case spawnFailed(String)
    /// A timer armed for the monotonic `deadline` reached it.
    case timerFired(PolicyTimer, deadline: Double)
    /// `backstopctl reset-failed`: the failure history and the escalation are cleared; an agent
    /// that was given up (or in safe mode) starts again on its active version.
    case resetFailed
    /// `backstopctl stop`: the agent (and what it left in the background) is terminated and
    /// kept stopped, across daemon restarts and reboots, until ``start``.
    case stop
    /// `backstopctl start`: an operator stop is lifted and the agent started now: from
    /// stopped, from backoff (the delay is skipped) or from given-up (the escalation is kept).
    case start
    /// The daemon is stopping: the agent is terminated and left stopped.
    case shutdown
    /// A boot loop, judged at the daemon's start before the agent runs: the machine failed to
    /// boot `failedBoots` times in a row (`boot_failure_threshold` or more) with the agent on
    /// its current content, the first of them started at `rowStartedAt`. A candidate is
    /// quarantined and rolled back before the agent starts. So is a known-good version promoted
    /// during those boots, to the known-good version before it: the loop began with the change,
    /// and the boots before it ran the older version. Otherwise, with no candidate to roll back
    /// (unchanged known-good content, or safe mode), the boots are no evidence against the
    /// content: the loop is reported and the agent started as it is, unless
    /// `boot_loop_stops_agent` asks for the ladder (an older known-good version, safe mode,
    /// give up) as after a crash loop.
    case bootLoop(failedBoots: Int, rowStartedAt: Date? = nil)
}
/// What arrived of a starting run's readiness (``AgentPhase/starting(_:)``).
public struct StartingRun: Sendable, Equatable, Codable {
    /// Whether READY=1 arrived.
    public var readyNotified = false
    /// Whether `ready_check_exec` succeeded.
    public var readyCheckPassed = false
    /// Failed ready checks so far; sets the pause before the next one.
    public var readyCheckFailuresInARow = 0

    /// A run that was just spawned: nothing has arrived yet.
    public init() {}

    /// Whether every readiness signal the agent is configured for (`notify`, `ready_check_exec`) arrived.
    func isComplete(_ settings: PolicySettings) -> Bool {
        (!settings.notify || readyNotified) && (!settings.hasReadyCheck || readyCheckPassed)
    }
}

/// A ready run's health (``AgentPhase/running(_:)``).
public struct ReadyRun: Sendable, Equatable, Codable {
    /// Failed health checks in a row.
    public var healthCheckFailuresInARow = 0

    /// A run that just became ready; `healthCheckFailuresInARow` failed health checks in a row.
    public init(healthCheckFailuresInARow: Int = 0) {
        self.healthCheckFailuresInARow = healthCheckFailuresInARow
    }
}

/// How an agent has been failing and how far its escalation went: the failures counted toward
/// a crash loop, the restart backoff, the known-good versions tried. One value, so that what
/// resets it (a healthy run, another version, `reset-failed`) is said in one place.
public struct EscalationState: Sendable, Equatable {
    /// Failures inside the sliding window, oldest first.
    public internal(set) var failures: [FailureRecord] = []
    /// Failures since the last healthy run; drives the backoff.
    public internal(set) var consecutiveFailures = 0
    /// Known-good versions already tried in the current escalation.
    public internal(set) var escalationTried: [String] = []
    /// Whether a rollback was followed by the same failure on known-good content: Backstop
    /// then stops switching versions. Cleared by `reset-failed`, `activate` and `rollback`.
    public internal(set) var rollbackDidNotHelp = false
    /// The agent crash-loops on content that has no known-good version to compare it with;
    /// cleared by a healthy run of `restart_delay_max_sec`, a promotion, `reset-failed`,
    /// `activate` and `rollback`.
    public internal(set) var firstContentFailure: FirstContentFailure?

    /// Nothing failed yet.
    public init() {}

    /// A run was healthy for `restart_delay_max_sec`: the backoff starts again from its first step.
    mutating func healthyRun() {
        consecutiveFailures = 0
        firstContentFailure = nil
    }

    /// Another version becomes active: the failures and the backoff belong to the version that ran.
    mutating func forgetRuns() {
        firstContentFailure = nil
        failures = []
        consecutiveFailures = 0
    }

    /// An operator chose what to run (`activate`, `rollback`): the ladder starts again.
    mutating func restartLadder() {
        escalationTried = []
        rollbackDidNotHelp = false
    }
}

/// Timers the policy asks its host to run; each fires at most once per arming.
public enum PolicyTimer: String, Sendable, CaseIterable, Codable {
    /// `start_timeout_sec` after spawn (with `notify` or `ready_check_exec`).
    case startTimeout
    /// One second after spawn (without `notify` or `ready_check_exec`): the agent counts as started.
    case startedAfter
    /// `watchdog_sec` after the last heartbeat.
    case watchdog
    /// The end of the candidate's probation.
    case probation
    /// `restart_delay_max_sec` of healthy running: the backoff resets.
    case backoffReset
    /// The end of a restart delay.
    case restart
    /// The next `ready_check_exec` run.
    case readyCheck
    /// The next `health_check_exec` run.
    case healthCheck
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
    /// Collect garbage in the agent's store: a version was staged, promoted or quarantined,
    /// so which versions are kept may have changed.
    case collectGarbage
    /// The agent was started in this boot: the boot log says so, so that a failed boot
    /// counts against the content it ran.
    case markStartedThisBoot
    /// The agent became ready: its `boot_good_after_sec` toward a good boot starts now.
    case startBootHealthClock
    /// Run a probe; its process is killed after `timeoutSeconds` and the result fed to
    /// ``AgentPolicy/handle(_:at:)`` as ``AgentEvent/probeFinished(_:result:)``.
    case probe(Probe, timeoutSeconds: Double)
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
    /// Set when the attribution is not the reason's usual one (a ready check that cannot run
    /// is a configuration error even when the program is part of the content).
    public var attribution: Attribution?
    /// What the agent's last output named as being in its way, nil when it named nothing.
    public var obstacle: SandboxObstacle?

    /// How it failed, as two failures are compared to tell whether a rollback helped:
    /// the reason, and the signal for a crash (`crashed SIGSEGV`, `hung`, `exited`).
    public var signature: String {
        signal.map { "\(reason.rawValue) \(SignalName.of($0))" } ?? reason.rawValue
    }
}

/// Why the escalation ladder reached safe mode or gave up (`BACKSTOP_REASON`).
public enum EscalationReason: String, Sendable, Codable {
    /// The failing content has no known-good version behind it (or none intact).
    case noKnownGood = "no-known-good"
    /// Every known-good version crash-looped too.
    case knownGoodCrashLoops = "known-good-crash-loops"
    /// The agent crash-looped in safe mode.
    case safeModeCrashLoops = "safe-mode-crash-loop"
    /// Every known-good version boot-looped too.
    case knownGoodBootLoops = "known-good-boot-loops"
    /// The machine boot-looped with the agent in safe mode.
    case safeModeBootLoops = "safe-mode-boot-loop"
    /// Safe mode means "do not start": `safe_mode_exec` is empty.
    case noSafeModeExec = "no-safe-mode-exec"
    /// No content is left to run safe mode on.
    case noContent = "no-content"
    /// After a rollback the agent failed the same way on known-good content.
    case rollbackDidNotHelp = "rollback-did-not-help"
    /// The failing content has no known-good version to compare it with: not quarantined,
    /// the agent is restarted with backoff (a `crash-loop` decision's reason, never a step of the ladder).
    case noComparison = "no-comparison"

    /// Part of a sentence: "no known-good version is left".
    public var explanation: String {
        switch self {
        case .noKnownGood: return "the failing content has no intact known-good version behind it"
        case .knownGoodCrashLoops: return "every known-good version crash-loops too"
        case .safeModeCrashLoops: return "it crash-loops in safe mode as well"
        case .knownGoodBootLoops: return "the machine fails to boot with every known-good version too"
        case .safeModeBootLoops: return "the machine fails to boot with it in safe mode as well"
        case .noSafeModeExec: return "no safe_mode_exec is configured"
        case .noContent: return "no content is left to run"
        case .rollbackDidNotHelp: return "rolling back did not help, the agent fails the same way on known-good content"
        case .noComparison: return "no known-good version exists to compare the failing content with"
        }
    }
}

/// Where the escalation ladder left an agent, and on what evidence: `status`'s `escalation`.
public struct EscalationRecord: Sendable, Equatable, Codable {
    /// The ladder step the agent is on.
    public enum Step: String, Sendable, Codable {
        /// Started with `safe_mode_exec`.
        case safeMode = "safe-mode"
        /// Left stopped.
        case givenUp = "given-up"
    }

    /// `safe-mode` or `given-up`.
    public var step: Step
    /// The `BACKSTOP_REASON` of the `safe-mode` or `gave-up` decision.
    public var reason: EscalationReason
    /// Why, in the words of that decision: "every known-good version crash-loops too, and no safe_mode_exec is configured".
    public var explanation: String
    /// What was observed: "3 failures within 120 s on content v1 (crashed SIGSEGV)",
    /// "2 failed boots in a row with the agent on content v1".
    public var evidence: String
    /// The version the evidence is about, nil when none was active.
    public var version: String?
    /// When the step was taken.
    public var at: Date
}

/// A boot loop with no candidate content to roll back, reported and not acted on
/// (`boot_loop_stops_agent` off): `status` shows it until `reset-failed`.
public struct BootLoopRecord: Sendable, Equatable, Codable {
    /// Failed boots in a row with the agent on `version`.
    public var failedBoots: Int
    /// The content the agent ran in them, and still runs.
    public var version: String
    /// When the daemon judged it, at the start of the boot after them.
    public var at: Date

    /// "boot loop: 2 failed boots, no candidate content to roll back"
    public var description: String {
        "boot loop: \(failedBoots) failed boots, no candidate content to roll back"
    }
}

/// The last rollback, for `status` and the degraded mark.
public struct RollbackRecord: Sendable, Equatable, Codable {
    /// The version rolled back from (`none` when nothing was active).
    public var from: String
    /// The known-good version made active.
    public var to: String
    /// Why it was rolled back.
    public var reason: RollbackReason
    /// Wall-clock time of the rollback.
    public var at: Date
    /// How the agent failed on `from` for a crash-loop rollback, e.g. `crashed SIGSEGV`
    /// (``FailureRecord/signature``); nil for other rollbacks.
    public var failure: String?
}

/// Why the agent was rolled back: the `BACKSTOP_REASON` of a `rollback` decision, `status`'s
/// `last_rollback.reason` and the state file's, in SPEC.md's spelling.
public enum RollbackReason: String, Sendable, Codable, Equatable, CaseIterable {
    /// The candidate crash-looped in probation.
    case crashLoop = "crash-loop"
    /// A known-good version crash-looped; the agent went back to an older one.
    case crashLoopOnKnownGood = "crash-loop-on-known-good"
    /// The machine boot-looped with the candidate, or with a version promoted during the failed boots.
    case bootLoop = "boot-loop"
    /// The machine boot-looped with a known-good version; the agent went back to an older one.
    case bootLoopOnKnownGood = "boot-loop-on-known-good"
    /// The active version's files no longer matched their digest.
    case verificationFailed = "verification-failed"
    /// An operator ran `backstopctl rollback`.
    case `operator`
}

/// Errors of operator requests the policy refuses.
public enum PolicyError: Error, Equatable, CustomStringConvertible {
    case noSuchVersion(String)
    case versionQuarantined(String)
    /// The version (first) holds the same bytes as a quarantined one (second).
    case identicalToQuarantined(String, String)
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
        case .identicalToQuarantined(let id, let twin):
            return "content version \"\(id)\" is identical to quarantined version \"\(twin)\" (same SHA-256); release \(twin) first if it was quarantined wrongly"
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
/// The host feeds each ``AgentEvent`` with the current ``Moment`` to ``handle(_:at:)``, a
/// table of ``AgentPhase`` × ``AgentEvent`` in the manner of s6-supervise, and carries out
/// the returned ``PolicyAction``s in order. Every rule is a pure function of the events and
/// the injected clock, so tests drive it without processes or sleeps. Operator requests
/// that can be refused (``activate(_:at:)``, ``rollback(to:at:)``, ``promote(_:at:)``,
/// ``release(_:)``) are methods that throw.
public struct AgentPolicy: Sendable, Equatable {
    /// The agent's numbers from its `[[agent]]` table.
    public let settings: PolicySettings
    /// The agent's content versions and which is active.
    public private(set) var ledger: ContentLedger
    /// Where the agent's current run is: starting, running, in backoff, stopped, ...
    public private(set) var phase: AgentPhase = .stopped
    /// Whether the agent runs `exec` or, after escalation, `safe_mode_exec`.
    public private(set) var mode: RunMode = .normal
    /// The failures counted toward a crash loop, the restart backoff and how far the escalation went.
    public private(set) var escalationState = EscalationState()
    /// Healthy seconds the candidate has accumulated before the current run.
    public private(set) var probationBankedSeconds: Double = 0
    /// When the current run became ready (monotonic), nil when not running.
    public private(set) var readySinceMonotonic: Double?
    /// The version the last spawn ran, which an exit is about even after an activation.
    public private(set) var runningVersion: String?
    /// The last rollback, nil if none; with ``resetFailedAt`` it decides the degraded mark.
    public private(set) var lastRollback: RollbackRecord?
    /// When an operator last ran `reset-failed`: rollbacks before it no longer mark the agent degraded.
    public private(set) var resetFailedAt: Date?
    /// Deadlines of armed timers.
    public private(set) var timers: [PolicyTimer: Double] = [:]
    /// Whether an operator stopped the agent (`backstopctl stop`); it stays stopped until `start`.
    public private(set) var operatorStopped = false
    /// Why the agent's store cannot be used (a symlink where one of its directories should
    /// be, ``StoreError/layoutRefused(path:found:)``): the agent is never started and is
    /// degraded with this reason until a restart finds the store sound. Nil when it can.
    public var storeRefusal: String?
    /// The ladder step (safe mode, given up) the agent was put on and why; nil when neither.
    public private(set) var escalation: EscalationRecord?
    /// A boot loop reported without acting on it (no candidate to roll back); cleared by `reset-failed`.
    public private(set) var reportedBootLoop: BootLoopRecord?
    /// The last preflight that failed, with its control; kept for `status`.
    public private(set) var lastPreflightFailure: PreflightFailure?

    /// A policy for a stopped agent in normal mode, with no failures counted.
    public init(settings: PolicySettings, ledger: ContentLedger = ContentLedger()) {
        self.settings = settings
        self.ledger = ledger
    }

    // MARK: - Queries

    /// Failures of every reason inside the window ending at `now`, oldest first.
    public func recentFailures(at now: Moment) -> [FailureRecord] {
        escalationState.failures.filter { now.monotonicSeconds - $0.monotonicSeconds < settings.failureWindowSeconds }
    }

    /// The failures inside the window that count against the content (``Attribution/content``).
    public func countedFailures(at now: Moment) -> [FailureRecord] {
        recentFailures(at: now).filter { attribution(of: $0) == .content }
    }

    /// What `failure` says about the content: its own attribution, else its reason's.
    public func attribution(of failure: FailureRecord) -> Attribution {
        failure.attribution ?? settings.attribution(of: failure.reason)
    }

    /// How many failures that do not count against the content are kept (the most recent):
    /// an agent that exits cleanly many times a second must not grow the state without bound.
    public static let uncountedFailuresKept = 20

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

    /// Handles one event in the agent's current ``phase``: the policy's state × event table,
    /// in the manner of s6-supervise, one `switch phase` per event. Every cell is written out,
    /// those that ignore their event among them, so that each rule is found in one place (a
    /// single `switch (phase, event)` is more than the compiler can check for exhaustiveness).
    /// A timer firing that was re-armed or disarmed since (its `deadline` is not the armed
    /// one) is stale and ignored in any phase.
    /// - Returns: what the host carries out, in order.
    public mutating func handle(_ event: AgentEvent, at now: Moment) -> [PolicyAction] {
        switch event {
        case .begin(let due):
            switch phase {
            case .stopped:
                if let due, due > now.monotonicSeconds, ledger.active != nil, !operatorStopped {
                    phase = .backoff
                    return [arm(.restart, at: due)]
                }
                return spawnActive(at: now)
            case .starting, .running, .stopping, .backoff, .restarting, .daemonized, .givenUp, .awaitingDependency:
                return []
            }

        case .activeContentCorrupt(let detail):
            switch phase {
            case .starting:
                // The spawn the host dropped is made again, on the version rolled back to.
                return quarantineCorruptActive(detail, pending: .spawn, at: now)
            case .stopping(.restart):
                // The host dropped the stop before the restart: it is asked for again.
                return quarantineCorruptActive(detail, pending: .terminate, at: now)
            case .stopped, .running, .stopping(.failure), .stopping(.shutdown), .stopping(.operatorStop),
                .stopping(.readyCheckCannotRun), .backoff, .restarting, .daemonized, .givenUp, .awaitingDependency:
                return quarantineCorruptActive(detail, pending: nil, at: now)
            }

        case .agentStarted(let pid):
            switch phase {
            case .starting:
                var actions = recordStarted(pid: pid)
                if settings.notify || settings.hasReadyCheck {
                    actions.append(arm(.startTimeout, at: now.monotonicSeconds + settings.startTimeoutSeconds))
                    if settings.hasReadyCheck { actions.append(arm(.readyCheck, at: now.monotonicSeconds)) }
                } else {
                    actions.append(arm(.startedAfter, at: now.monotonicSeconds + PolicySettings.startedAfterSeconds))
                }
                return actions
            case .stopping:
                // Asked to stop while it was being created: recorded as started, so that its
                // exit has a start, and terminated.
                return recordStarted(pid: pid) + [.terminate(signal: SIGTERM)]
            case .stopped, .running, .backoff, .restarting, .daemonized, .givenUp, .awaitingDependency:
                return []
            }

        case .agentReady:
            switch phase {
            case .starting(var run):
                guard settings.notify, !run.readyNotified else { return [] }
                run.readyNotified = true
                phase = .starting(run)
                return run.isComplete(settings) ? becomeReady(at: now) : []
            case .stopped, .running, .stopping, .backoff, .restarting, .daemonized, .givenUp, .awaitingDependency:
                return []
            }

        case .probeFinished(.ready, let result):
            switch phase {
            case .starting(let run):
                return readyCheckFinished(result, run: run, at: now)
            case .stopped, .running, .stopping, .backoff, .restarting, .daemonized, .givenUp, .awaitingDependency:
                return []
            }

        case .probeFinished(.health, let result):
            switch phase {
            case .running(let run):
                return healthCheckFinished(result, run: run, at: now)
            case .stopped, .starting, .stopping, .backoff, .restarting, .daemonized, .givenUp, .awaitingDependency:
                return []
            }

        case .heartbeat:
            switch phase {
            case .running:
                guard settings.watchdogSeconds > 0 else { return [] }
                return [arm(.watchdog, at: now.monotonicSeconds + settings.watchdogSeconds)]
            case .stopped, .starting, .stopping, .backoff, .restarting, .daemonized, .givenUp, .awaitingDependency:
                return []
            }

        case .agentExited(let termination, let oomKill, let memoryRlimitBytes, let survivors, let known, let obstacle):
            switch phase {
            case .stopping(.restart):
                let actions = endRun(at: now) + [recordExit(termination, version: exitVersion, reason: nil, at: now)]
                return actions + spawnActive(at: now)
            case .stopping(.shutdown), .stopping(.operatorStop):
                let actions = endRun(at: now)
                phase = .stopped
                return actions + [recordExit(termination, version: exitVersion, reason: nil, at: now)]
            case .stopping(.failure(let reason)):
                var actions = endRun(at: now)
                var record = recordExit(termination, version: exitVersion, reason: reason, obstacle: obstacle, at: now)
                if reason == .startTimeout, case .record(var decision) = record {
                    decision.message += " It did not become ready within \(Self.format(settings.startTimeoutSeconds)) s (start_timeout_sec), so Backstop stopped it."
                    record = .record(decision)
                }
                actions.append(record)
                return actions + countFailure(reason, termination: termination, obstacle: obstacle, at: now)
            case .stopping(.readyCheckCannotRun):
                let actions = endRun(at: now)
                    + [recordExit(termination, version: exitVersion, reason: .execFailed, attribution: .configuration, at: now)]
                return actions + countFailure(.execFailed, termination: termination, attribution: .configuration, at: now)
            case .starting, .running:
                return endRun(at: now) + unaskedExit(
                    termination, oomKill: oomKill, memoryRlimitBytes: memoryRlimitBytes, survivors: survivors, reason: known,
                    obstacle: obstacle, at: now)
            case .stopped, .backoff, .restarting, .givenUp, .daemonized, .awaitingDependency:
                // No run to end: only what is left of one is dropped.
                return endRun(at: now)
            }

        case .stoppedWithDependency(let dependency, let termination):
            switch phase {
            case .starting, .running, .backoff, .restarting:
                var actions = disarmRunTimers() + disarm([.restart])
                bankProbation(at: now)
                phase = .awaitingDependency(dependency)
                actions.append(.record(Decision(
                    .agentExited, agent: settings.agent, version: runningVersion ?? ledger.active,
                    exitStatus: termination?.exitStatus, signal: termination?.signal,
                    message: "Agent \(settings.agent) was stopped by systemd with \(dependency), which its unit requires; not a failure, and it starts again once \(dependency) is active again.")))
                return actions
            case .stopping, .stopped, .givenUp, .daemonized, .awaitingDependency:
                return []
            }

        case .dependencyActive:
            switch phase {
            case .awaitingDependency:
                return spawnActive(at: now)
            case .stopped, .starting, .running, .stopping, .backoff, .restarting, .daemonized, .givenUp:
                return []
            }

        case .backgroundProcessesExited:
            switch phase {
            case .daemonized:
                return scheduleRestart(at: now)
            case .stopping(.restart):
                return spawnActive(at: now)
            case .stopping(.shutdown), .stopping(.operatorStop):
                phase = .stopped
                return []
            case .stopping(.failure), .stopping(.readyCheckCannotRun), .starting, .running, .backoff, .restarting, .stopped,
                .givenUp, .awaitingDependency:
                return []
            }

        case .spawnFailed(let message):
            switch phase {
            case .starting:
                let counts = settings.attribution(of: .execFailed) == .content
                let why = counts
                    ? "the program is part of content \(ledger.active ?? "none"), so this counts against it"
                    : FailureReason.execFailed.remedy!
                let actions = disarmRunTimers() + [.record(Decision(
                    .agentExited, agent: settings.agent, version: ledger.active,
                    failures: counts ? countedFailures(at: now).count + 1 : nil, reason: FailureReason.execFailed.rawValue,
                    message: "Agent \(settings.agent) could not be started: \(message); \(why)."))]
                return actions + countFailure(.execFailed, termination: nil, at: now)
            // A stop requested meanwhile is honoured as if the process had exited.
            case .stopping(.shutdown), .stopping(.operatorStop):
                let actions = disarmRunTimers()
                phase = .stopped
                return actions
            case .stopping(.restart):
                return disarmRunTimers() + spawnActive(at: now)
            case .stopping(.failure(let reason)):
                return disarmRunTimers() + countFailure(reason, termination: nil, at: now)
            case .stopping(.readyCheckCannotRun):
                return disarmRunTimers() + countFailure(.execFailed, termination: nil, attribution: .configuration, at: now)
            case .stopped, .running, .backoff, .restarting, .givenUp, .daemonized, .awaitingDependency:
                return disarmRunTimers()
            }

        case .timerFired(let timer, let deadline):
            // A firing of a timer re-armed or disarmed since is stale, in any phase.
            guard timers[timer] == deadline else { return [] }
            timers[timer] = nil
            return timerFired(timer, at: now)

        case .resetFailed:
            clearFailureHistory(at: now)
            switch phase {
            case .givenUp:
                mode = .normal
                return disarm([.restart]) + spawnActive(at: now)
            case .stopped, .starting, .running, .stopping, .backoff, .restarting, .daemonized, .awaitingDependency:
                // Safe mode ends: the agent starts again on its active version with `exec`.
                guard mode == .safeMode else { return [] }
                mode = .normal
                return restartOnActive(at: now)
            }

        case .stop:
            operatorStopped = true
            let actions = disarm([.restart])
            switch phase {
            case .starting, .running, .daemonized:
                bankProbation(at: now)
                phase = .stopping(.operatorStop)
                return actions + disarmRunTimers() + [.terminate(signal: SIGTERM)]
            case .stopping(.shutdown), .stopped, .givenUp:
                return actions
            case .stopping(.restart), .stopping(.failure), .stopping(.operatorStop), .stopping(.readyCheckCannotRun):
                // A restart or a failure in progress: the exit ends in stopped instead.
                phase = .stopping(.operatorStop)
                return actions
            case .backoff, .restarting, .awaitingDependency:
                phase = .stopped
                return actions
            }

        case .start:
            operatorStopped = false
            switch phase {
            case .stopping(.operatorStop):
                phase = .stopping(.restart)
                return []
            case .stopped, .backoff, .restarting, .givenUp, .awaitingDependency:
                // From backoff the delay is skipped; from given-up the escalation is kept.
                return disarm([.restart]) + spawnActive(at: now)
            case .starting, .running, .stopping(.restart), .stopping(.failure), .stopping(.shutdown),
                .stopping(.readyCheckCannotRun), .daemonized:
                return []
            }

        case .shutdown:
            let actions = disarm(PolicyTimer.allCases)
            switch phase {
            case .starting, .running, .stopping, .daemonized:
                bankProbation(at: now)
                phase = .stopping(.shutdown)
                return actions + [.terminate(signal: SIGTERM)]
            case .backoff, .restarting, .awaitingDependency:
                phase = .stopped
                return actions
            case .stopped, .givenUp:
                return actions
            }

        case .bootLoop(let failedBoots, let rowStartedAt):
            switch phase {
            case .stopped:
                return judgeBootLoop(failedBoots: failedBoots, rowStartedAt: rowStartedAt, at: now)
            case .starting, .running, .stopping, .backoff, .restarting, .daemonized, .givenUp, .awaitingDependency:
                return []
            }
        }
    }

    /// The cells of ``AgentEvent/timerFired(_:deadline:)``: `timer` reached its deadline (not a stale firing).
    private mutating func timerFired(_ timer: PolicyTimer, at now: Moment) -> [PolicyAction] {
        switch (timer, phase) {
        case (.startTimeout, .starting):
            // Not hung: it never became ready. Its `agent-exited` entry (reason `start-timeout`) reports it.
            phase = .stopping(.failure(.startTimeout))
            return [.terminate(signal: SIGABRT)]
        case (.startTimeout, .stopped), (.startTimeout, .running), (.startTimeout, .stopping), (.startTimeout, .backoff),
            (.startTimeout, .restarting), (.startTimeout, .daemonized), (.startTimeout, .givenUp),
            (.startTimeout, .awaitingDependency):
            return []

        case (.startedAfter, .starting):
            return becomeReady(at: now)
        case (.startedAfter, .stopped), (.startedAfter, .running), (.startedAfter, .stopping), (.startedAfter, .backoff),
            (.startedAfter, .restarting), (.startedAfter, .daemonized), (.startedAfter, .givenUp),
            (.startedAfter, .awaitingDependency):
            return []

        case (.readyCheck, .starting):
            return [.probe(.ready, timeoutSeconds: settings.healthCheckTimeoutSeconds)]
        case (.readyCheck, .stopped), (.readyCheck, .running), (.readyCheck, .stopping), (.readyCheck, .backoff),
            (.readyCheck, .restarting), (.readyCheck, .daemonized), (.readyCheck, .givenUp), (.readyCheck, .awaitingDependency):
            return []

        case (.watchdog, .running):
            phase = .stopping(.failure(.hung))
            return [
                .record(Decision(
                    .agentHung, agent: settings.agent, version: ledger.active, reason: FailureReason.hung.rawValue,
                    message: "Agent \(settings.agent) missed its watchdog heartbeat for \(Self.format(settings.watchdogSeconds)) s; aborting it.")),
                .terminate(signal: SIGABRT),
            ]
        case (.watchdog, .stopped), (.watchdog, .starting), (.watchdog, .stopping), (.watchdog, .backoff),
            (.watchdog, .restarting), (.watchdog, .daemonized), (.watchdog, .givenUp), (.watchdog, .awaitingDependency):
            return []

        case (.probation, .running(let run)):
            return probationEnded(run: run, at: now)
        case (.probation, .stopped), (.probation, .starting), (.probation, .stopping), (.probation, .backoff),
            (.probation, .restarting), (.probation, .daemonized), (.probation, .givenUp), (.probation, .awaitingDependency):
            return []

        case (.healthCheck, .running):
            return [.probe(.health, timeoutSeconds: settings.healthCheckTimeoutSeconds)]
        case (.healthCheck, .stopped), (.healthCheck, .starting), (.healthCheck, .stopping), (.healthCheck, .backoff),
            (.healthCheck, .restarting), (.healthCheck, .daemonized), (.healthCheck, .givenUp),
            (.healthCheck, .awaitingDependency):
            return []

        case (.restart, .backoff), (.restart, .restarting):
            return spawnActive(at: now)
        // A restart delay that ended after something else started or stopped the agent.
        case (.restart, .stopped), (.restart, .starting), (.restart, .running), (.restart, .stopping),
            (.restart, .daemonized), (.restart, .givenUp), (.restart, .awaitingDependency):
            return []

        // A healthy run of `restart_delay_max_sec` resets the backoff, whatever came after it.
        case (.backoffReset, .stopped), (.backoffReset, .starting), (.backoffReset, .running), (.backoffReset, .stopping),
            (.backoffReset, .backoff), (.backoffReset, .restarting), (.backoffReset, .daemonized), (.backoffReset, .givenUp),
            (.backoffReset, .awaitingDependency):
            escalationState.healthyRun()
            return []
        }
    }

    /// The version the ending run was spawned on: an activation while it ran changed the
    /// active one, not what it runs.
    private var exitVersion: String? {
        runningVersion ?? ledger.active
    }

    /// What is left of a run when its process ended: its timers, and its healthy time banked for probation.
    private mutating func endRun(at now: Moment) -> [PolicyAction] {
        let actions = disarmRunTimers()
        bankProbation(at: now)
        return actions
    }

    /// The `agent-started` decision of a process with `pid` (0 while a unit has no main
    /// process yet), and the boot log's note that the agent started in this boot.
    private func recordStarted(pid: Int32) -> [PolicyAction] {
        let started = PolicyAction.record(Decision(
            .agentStarted, agent: settings.agent, version: exitVersion,
            message: "Started agent \(settings.agent)\(pid > 0 ? " (pid \(pid))" : "") on content \(exitVersion ?? "none")\(mode == .safeMode ? " in safe mode" : "")."))
        return [started, .markStartedThisBoot]
    }

    /// What a host had pending for a version found damaged, and makes again for the version rolled back to.
    private enum PendingRunAction {
        /// The spawn of a run that was starting.
        case spawn
        /// The stop before a restart.
        case terminate
    }

    /// The active version failed verification (its files no longer match their digest), at
    /// start or when the host was about to switch to it: it is quarantined and the agent rolled
    /// back to the last known-good version (verified in turn by the host), or it gives up.
    /// `pending` is what the host dropped for the damaged version.
    private mutating func quarantineCorruptActive(_ detail: String, pending: PendingRunAction?, at now: Moment) -> [PolicyAction] {
        guard let active = ledger.active else { return [] }
        ledger.quarantine(active, reason: "verification-failed", at: now.wall)
        // A rollback to this version never happened: status must not claim it.
        if lastRollback?.to == active { lastRollback = nil }
        var actions: [PolicyAction] = [.record(Decision(
            .contentQuarantined, agent: settings.agent, version: active, reason: "verification-failed",
            message: "Quarantined content \(active) of agent \(settings.agent): \(detail).")), .collectGarbage]
        let pendingStop: [PolicyAction] = pending == .terminate ? [.terminate(signal: SIGTERM)] : []
        // Not back to a known-good version that already failed in this escalation.
        guard let knownGood = ledger.knownGoodNewestFirst.first(where: { !escalationState.escalationTried.contains($0) }) else {
            ledger.deactivate()
            actions.append(.switchContent(version: nil))
            if !pendingStop.isEmpty { return actions + pendingStop }
            return actions + enterSafeMode(.noKnownGood, version: active, evidence: "content \(active) failed verification: \(detail)", at: now)
        }
        forgetRunHistory()
        ledger.activate(knownGood)
        lastRollback = RollbackRecord(from: active, to: knownGood, reason: .verificationFailed, at: now.wall)
        actions += [
            .switchContent(version: knownGood),
            .record(Decision(
                .rollback, agent: settings.agent, version: knownGood, previousVersion: active,
                reason: RollbackReason.verificationFailed.rawValue,
                message: "Rolled agent \(settings.agent) back from content \(active) to known-good \(knownGood) (verification-failed).")),
        ]
        if pending == .spawn { return actions + [.spawn(version: knownGood, mode: mode)] }
        return actions + pendingStop
    }

    /// A `ready_check_exec` run of a starting agent ended. One that cannot run at all stops
    /// the agent as an `exec-failed` configuration error.
    private mutating func readyCheckFinished(_ result: ProbeResult, run: StartingRun, at now: Moment) -> [PolicyAction] {
        guard settings.hasReadyCheck, !run.readyCheckPassed else { return [] }
        var run = run
        switch result {
        case .passed:
            run.readyCheckPassed = true
            phase = .starting(run)
            return run.isComplete(settings) ? becomeReady(at: now) : []
        case .couldNotRun:
            phase = .stopping(.readyCheckCannotRun)
            return disarmRunTimers() + [.terminate(signal: SIGTERM)]
        case .failed:
            break
        }
        run.readyCheckFailuresInARow += 1
        phase = .starting(run)
        let pause = min(
            PolicySettings.readyCheckRetrySeconds * pow(2, Double(min(run.readyCheckFailuresInARow - 1, 30))),
            PolicySettings.readyCheckRetryMaxSeconds)
        return [arm(.readyCheck, at: now.monotonicSeconds + pause)]
    }

    /// A `health_check_exec` run of a ready agent ended. One that cannot run is not counted (the host reports it).
    private mutating func healthCheckFinished(_ result: ProbeResult, run: ReadyRun, at now: Moment) -> [PolicyAction] {
        guard let interval = settings.healthCheckIntervalSeconds else { return [] }
        var run = run
        let detail: String
        switch result {
        case .passed: run.healthCheckFailuresInARow = 0; detail = ""
        case .failed(let what): run.healthCheckFailuresInARow += 1; detail = what
        case .couldNotRun: return [arm(.healthCheck, at: now.monotonicSeconds + interval)]
        }
        phase = .running(run)
        guard run.healthCheckFailuresInARow >= settings.healthCheckFailures else {
            return [arm(.healthCheck, at: now.monotonicSeconds + interval)]
        }
        phase = .stopping(.failure(.healthCheck))
        return [
            .record(Decision(
                .agentHung, agent: settings.agent, version: ledger.active, reason: FailureReason.healthCheck.rawValue,
                message: "Agent \(settings.agent) failed its health check \(run.healthCheckFailuresInARow) times in a row (last: \(detail)); stopping it.")),
            .terminate(signal: SIGTERM),
        ]
    }

    /// The candidate's probation ended with the agent ready: it becomes known-good, unless
    /// the last health check failed (then the next one is waited for).
    private mutating func probationEnded(run: ReadyRun, at now: Moment) -> [PolicyAction] {
        guard let candidate = ledger.candidate else { return [] }
        if run.healthCheckFailuresInARow > 0, let interval = settings.healthCheckIntervalSeconds {
            return [arm(.probation, at: now.monotonicSeconds + interval)]
        }
        ledger.promote(candidate, at: now.wall)
        probationBankedSeconds = 0
        escalationState.firstContentFailure = nil
        return [.record(Decision(
            .contentPromoted, agent: settings.agent, version: candidate,
            message: "Content \(candidate) of agent \(settings.agent) passed probation and is now known-good.")), .collectGarbage]
    }

    /// The agent ended without Backstop asking (starting or ready): classified, recorded and counted.
    private mutating func unaskedExit(
        _ termination: Termination, oomKill: OOMKill?, memoryRlimitBytes: UInt64?, survivors: [Int32],
        reason known: FailureReason?, obstacle: SandboxObstacle?, at now: Moment
    ) -> [PolicyAction] {
        let version = exitVersion
        var reason = known ?? FailureReason.classify(
            termination, oomKilled: oomKill != nil, survivorsRemain: !survivors.isEmpty, successExitStatus: settings.successExitStatus)
        var attribution: Attribution?
        var note: String?
        if reason == .oomKilled, case .memoryMax(let bytes) = oomKill {
            // The known-good version ran within the same limit: only a candidate that
            // outgrows it is to blame; on known-good content the limit is.
            reason = .memoryLimit
            let compared = version != nil && version == ledger.candidate && ledger.knownGood != nil
            attribution = compared ? .content : .restartOnly
            note = "The OOM killer of its own cgroup ended it at memory_max \(SandboxSpec.formatBytes(bytes)); "
                + (compared ? "counted against candidate \(version!), as known-good \(ledger.knownGood!) ran within it"
                    : "not counted against the content, as no known-good version ran within it for comparison")
                + ". Raise memory_max if this content needs more."
        } else if let bytes = memoryRlimitBytes, settings.attribution(of: reason) == .content {
            note = "memory_max \(SandboxSpec.formatBytes(bytes)) holds this agent only as RLIMIT_DATA (no cgroup can hold it here): an allocation past it fails inside the agent, which may report it as anything else; raise memory_max to rule it out."
        }
        if attribution == nil, obstacle == .processLimit, version != ledger.candidate, settings.attribution(of: reason) == .content {
            // Known-good content that ran within the same limit before: the limit is shared
            // with every process of the agent's user (its own preflights among them), so a
            // fork refused for it says the host ran out, not that the content went wrong.
            attribution = .restartOnly
            note = "A fork refused for the process limit (EAGAIN) on known-good content is not counted against it: the limit is shared with every process of the agent's user, a preflight of this agent among them. Give the agent a user of its own, or raise tasks_max."
        }
        var exit = recordExit(termination, version: version, reason: reason, attribution: attribution, obstacle: obstacle, at: now)
        if case .record(var decision) = exit {
            if reason == .daemonized { decision.message += " Still running: pid \(survivors.map(String.init).joined(separator: ", "))." }
            if let note { decision.message += " " + note }
            exit = .record(decision)
        }
        return [exit] + countFailure(reason, termination: termination, attribution: attribution, obstacle: obstacle, at: now)
    }

    /// `reset-failed`: the failure history and the escalation are forgotten.
    private mutating func clearFailureHistory(at now: Moment) {
        escalationState = EscalationState()
        reportedBootLoop = nil
        resetFailedAt = now.wall
    }

    /// Whether Backstop has signalled the agent and waits for its exit.
    public var isStopping: Bool {
        if case .stopping = phase { return true }
        return false
    }

    /// Whether an operator should look at this agent: it is in backoff, safe mode or
    /// given up, or it was rolled back since the last `reset-failed`.
    public var isDegraded: Bool {
        degradedReason != nil
    }

    /// Why the agent is degraded, for `status`; nil when it is not.
    public var degradedReason: String? {
        if let storeRefusal { return "not started: \(storeRefusal)" }
        if phase == .givenUp || mode == .safeMode {
            let step = phase == .givenUp ? "given up" : "in safe mode"
            guard let escalation = currentEscalation else { return step }
            return "\(step): \(escalation.explanation); evidence: \(escalation.evidence)"
        }
        if escalationState.rollbackDidNotHelp { return "rollback did not help" }
        if let firstContentFailure = escalationState.firstContentFailure { return firstContentFailure.summary }
        switch phase {
        case .daemonized: return "its program forked into the background (daemonized)"
        case .backoff: return "in backoff" + (escalationState.failures.last.map { " after \($0.reason.rawValue)" } ?? "")
        case .starting where escalationState.consecutiveFailures > 0:
            // A restart loop spends part of its time starting: not healthy until a run is ready.
            return "restarting after \(escalationState.consecutiveFailures) failure\(escalationState.consecutiveFailures == 1 ? "" : "s") in a row"
                + (escalationState.failures.last.map { " (last: \($0.reason.rawValue))" } ?? "") + ", not ready since"
        case .awaitingDependency(let unit): return "stopped by systemd with \(unit), which its unit requires; waiting for \(unit) to be active again"
        default: break
        }
        if let reportedBootLoop { return reportedBootLoop.description }
        guard let lastRollback, resetFailedAt.map({ lastRollback.at > $0 }) ?? true else { return nil }
        return "rolled back from \(lastRollback.from) to \(lastRollback.to) (\(lastRollback.reason.rawValue))"
    }

    /// The ladder step the agent is on now with its evidence: nil unless it is given up or in safe mode.
    public var currentEscalation: EscalationRecord? {
        guard let escalation else { return nil }
        switch escalation.step {
        case .givenUp: return phase == .givenUp ? escalation : nil
        case .safeMode: return mode == .safeMode && phase != .givenUp ? escalation : nil
        }
    }

    // MARK: - Operator requests

    /// Adds a staged version to the ledger (the store has copied and verified it).
    /// - Returns: its `content-staged` decision and a garbage collection.
    public mutating func staged(_ record: VersionRecord) -> [PolicyAction] {
        ledger.add(record)
        return [
            .record(Decision(
                .contentStaged, agent: settings.agent, version: record.id,
                message: "Staged content \(record.id) for agent \(settings.agent): \(record.fileCount == 1 ? "1 file" : "\(record.fileCount) files"), \(record.totalBytes) bytes, sha256 \(record.digest.prefix(16)).")),
            .collectGarbage,
        ]
    }

    /// Records that garbage collection removed the files of `id` (never the active version).
    public mutating func filesRemoved(_ id: String, at date: Date) {
        guard id != ledger.active else { return }
        ledger.filesRemoved(id, at: date)
    }

    /// Why version `id` may not be activated, nil when it may: it is not staged, it is
    /// quarantined, or it holds the same bytes as a quarantined version (staged before that one
    /// was quarantined).
    public func activationRefusal(_ id: String) -> PolicyError? {
        guard let record = ledger.record(id) else { return .noSuchVersion(id) }
        guard record.standing != .quarantined else { return .versionQuarantined(id) }
        if let twin = ledger.quarantinedByDigest[record.digest] { return .identicalToQuarantined(id, twin) }
        return nil
    }

    /// Makes `id` the active version and (re)starts the agent on it. A staged version
    /// becomes the candidate and starts its probation; activating resets the
    /// escalation, since the operator has chosen what to run.
    /// - Throws: ``PolicyError/noSuchVersion(_:)``, ``PolicyError/versionQuarantined(_:)``,
    ///   ``PolicyError/identicalToQuarantined(_:_:)``.
    public mutating func activate(_ id: String, at now: Moment) throws(PolicyError) -> [PolicyAction] {
        if let refusal = activationRefusal(id) { throw refusal }
        let previous = ledger.active
        forgetRunHistory()
        ledger.activate(id)
        escalationState.restartLadder()
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

    /// Staged version `id` failed its preflight (`reason`, `detail`), judged against `control`,
    /// the same preflight run on the active (or known-good) version. Only a control that passed
    /// makes the failure the candidate's: `preflight-failed`, then `content-quarantined`, and the
    /// live agent never sees it. A control that failed too, or none (the first content), means
    /// the preflight cannot judge this agent on this host: `preflight-failed` with reason
    /// `control-failed` or `no-control`, nothing is quarantined, and the host activates the
    /// version under normal probation, where the live agent is the judge.
    /// - Returns: the decisions; ``lastPreflightFailure`` says whether the version was quarantined.
    public mutating func preflightFailed(
        _ id: String, reason: FailureReason, detail: String, control: PreflightControl, at now: Moment
    ) -> [PolicyAction] {
        guard let record = ledger.record(id), record.standing == .staged else { return [] }
        let failure = PreflightFailure(version: id, reason: reason, detail: detail, control: control, at: now.wall)
        lastPreflightFailure = failure
        guard case .passed(let control) = control else {
            return [.record(Decision(
                .preflightFailed, agent: settings.agent, version: id, previousVersion: failure.controlVersion,
                reason: failure.verdict.rawValue, message: failure.sentence(agent: settings.agent)))]
        }
        ledger.quarantine(id, reason: "preflight-failed", at: now.wall)
        return [
            .record(Decision(
                .preflightFailed, agent: settings.agent, version: id, previousVersion: control, reason: reason.rawValue,
                message: failure.sentence(agent: settings.agent))),
            .record(Decision(
                .contentQuarantined, agent: settings.agent, version: id, reason: "preflight-failed",
                message: "Quarantined content \(id) of agent \(settings.agent): it failed preflight.")),
            .collectGarbage,
        ]
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
            escalationState.firstContentFailure = nil
            actions += disarm([.probation])
        }
        actions.append(.record(Decision(
            .contentPromoted, agent: settings.agent, version: id, reason: "operator",
            message: "Content \(id) of agent \(settings.agent) was promoted to known-good by an operator.")))
        actions.append(.collectGarbage)
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
        lastRollback = RollbackRecord(from: from, to: destination, reason: .operator, at: now.wall)
        escalationState.restartLadder()
        mode = .normal
        var actions: [PolicyAction] = [
            .switchContent(version: destination),
            .record(Decision(
                .rollback, agent: settings.agent, version: destination, previousVersion: from, reason: RollbackReason.operator.rawValue,
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

    // MARK: - Restoring persisted state

    /// Restores what the state file keeps. Within the boot that wrote it: failures with
    /// their monotonic times, the backoff count, banked probation. Across boots too: the
    /// versions, the escalation, given-up, an operator stop, the last rollback.
    /// The daemon's own restart is not an agent failure, so nothing is counted here.
    public mutating func restore(from state: AgentStateFile, currentBootID: String) {
        let sameBoot = state.bootID == currentBootID
        ledger = state.ledger
        escalationState.failures = sameBoot ? state.failures : []
        escalationState.consecutiveFailures = sameBoot ? state.consecutiveFailures : 0
        probationBankedSeconds = sameBoot ? state.probationBankedSeconds : 0
        phase = state.givenUp ? .givenUp : .stopped
        mode = state.mode
        escalationState.escalationTried = state.escalationTried
        lastRollback = state.lastRollback
        resetFailedAt = state.resetFailedAt
        operatorStopped = state.operatorStopped ?? false
        escalationState.rollbackDidNotHelp = state.rollbackDidNotHelp ?? false
        escalation = state.escalation
        reportedBootLoop = state.reportedBootLoop
        escalationState.firstContentFailure = state.firstContentFailure
        lastPreflightFailure = state.lastPreflightFailure
    }

    /// What ``restore(from:currentBootID:)`` needs after a daemon restart, as of `now`.
    public func stateFile(bootID: String, at now: Moment) -> AgentStateFile {
        var state = AgentStateFile()
        state.ledger = ledger
        state.bootID = bootID
        state.failures = escalationState.failures
        state.consecutiveFailures = escalationState.consecutiveFailures
        state.probationBankedSeconds = probationElapsedSeconds(at: now)
        state.givenUp = phase == .givenUp
        state.mode = mode
        state.escalationTried = escalationState.escalationTried
        state.lastRollback = lastRollback
        state.resetFailedAt = resetFailedAt
        state.restartDueMonotonicSeconds = timers[.restart]
        state.operatorStopped = operatorStopped ? true : nil
        state.rollbackDidNotHelp = escalationState.rollbackDidNotHelp ? true : nil
        state.escalation = currentEscalation
        state.reportedBootLoop = reportedBootLoop
        state.firstContentFailure = escalationState.firstContentFailure
        state.lastPreflightFailure = lastPreflightFailure
        return state
    }

    // MARK: - Rules

    private mutating func becomeReady(at now: Moment) -> [PolicyAction] {
        phase = .running(ReadyRun())
        readySinceMonotonic = now.monotonicSeconds
        var actions = disarm([.startTimeout, .startedAfter])
        actions.append(.record(Decision(
            .agentReady, agent: settings.agent, version: ledger.active,
            message: "Agent \(settings.agent) is ready on content \(ledger.active ?? "none").")))
        actions.append(.startBootHealthClock)
        if settings.watchdogSeconds > 0 {
            actions.append(arm(.watchdog, at: now.monotonicSeconds + settings.watchdogSeconds))
        }
        actions.append(arm(.backoffReset, at: now.monotonicSeconds + settings.restartDelayMaxSeconds))
        if let interval = settings.healthCheckIntervalSeconds {
            actions.append(arm(.healthCheck, at: now.monotonicSeconds + interval))
        }
        if ledger.candidate != nil, mode == .normal {
            let remaining = max(0, settings.probationSeconds - probationBankedSeconds)
            actions.append(arm(.probation, at: now.monotonicSeconds + remaining))
        }
        return actions
    }

    /// Records a failure and acts on its attribution (``FailureReason/attribution(cleanExitIsFailure:)``);
    /// `termination` is nil when there was no process to end (exec failed).
    private mutating func countFailure(
        _ reason: FailureReason, termination: Termination?, attribution: Attribution? = nil, obstacle: SandboxObstacle? = nil,
        at now: Moment
    ) -> [PolicyAction] {
        if reason == .cleanExit, settings.cleanExit == .normal, phase.isRunning {
            // The agent's normal life: no failure to record, no backoff step, nothing degraded.
            // A run that ends before it was ready is not: it backs off and shows degraded.
            phase = .restarting
            return [arm(.restart, at: now.monotonicSeconds + Double(settings.restartDelayMilliseconds) / 1000)]
        }
        let record = FailureRecord(
            reason: reason, version: runningVersion ?? ledger.active, monotonicSeconds: now.monotonicSeconds, at: now.wall,
            exitStatus: termination?.exitStatus, signal: termination?.signal, coreDumped: termination?.coreDumped,
            attribution: attribution, obstacle: obstacle)
        var uncounted = 0
        escalationState.failures = (recentFailures(at: now) + [record]).reversed().filter { failure in
            guard self.attribution(of: failure) != .content else { return true }
            uncounted += 1
            return uncounted <= Self.uncountedFailuresKept
        }.reversed()
        escalationState.consecutiveFailures += 1
        switch self.attribution(of: record) {
        case .restartOnly, .configuration:
            // Not the content's doing: restarted with backoff, never rolled back. A daemonized
            // agent still runs in the background; starting it again would run it twice.
            if reason == .daemonized {
                phase = .daemonized
                return []
            }
            return scheduleRestart(at: now)
        case .content:
            // A failure interrupts the healthy run that probation needs.
            probationBankedSeconds = 0
            guard countedFailures(at: now).count >= settings.failureThreshold else { return scheduleRestart(at: now) }
            guard hasComparison else { return crashLoopWithoutComparison(at: now) }
            return crashLoop(at: now)
        }
    }

    /// Whether a failing active version can be judged: some version is known-good, so the
    /// agent has run healthily in this sandbox on this host. Without one (a fresh install, a
    /// first configuration) a failure may as well be the sandbox's or the host's as the content's.
    private var hasComparison: Bool {
        mode != .normal || ledger.knownGood != nil
    }

    /// A crash loop on content with nothing to compare it with: reported (once per kind of
    /// failure and obstacle), not quarantined; the agent keeps being restarted with the capped
    /// backoff, so that a fixed sandbox or a reloaded configuration brings it up.
    private mutating func crashLoopWithoutComparison(at now: Moment) -> [PolicyAction] {
        let counted = countedFailures(at: now)
        let version = ledger.active ?? "none"
        let last = counted.last
        let failing = FirstContentFailure(
            version: version, failure: last?.signature ?? "failed", obstacle: last?.obstacle,
            since: escalationState.firstContentFailure?.since ?? now.wall)
        let known = escalationState.firstContentFailure.map { $0.version == failing.version && $0.failure == failing.failure && $0.obstacle == failing.obstacle } ?? false
        escalationState.firstContentFailure = failing
        var actions = scheduleRestart(at: now)
        guard !known else { return actions }
        let cap = Self.format(settings.restartDelayMaxSeconds)
        var message = "Agent \(settings.agent) failed \(counted.count) times within \(Self.format(settings.failureWindowSeconds)) s on content \(version) (\(failing.failure)), and no known-good version exists to compare it with: the content is not quarantined on this evidence; Backstop keeps restarting it with backoff (at most \(cap) s)."
        if let obstacle = failing.obstacle { message += " " + obstacle.sentence(agent: settings.agent) }
        actions.insert(.record(Decision(
            .crashLoop, agent: settings.agent, version: version, exitStatus: last?.exitStatus, signal: last?.signal,
            failures: counted.count, reason: EscalationReason.noComparison.rawValue, message: message)), at: 0)
        return actions
    }

    private mutating func crashLoop(at now: Moment) -> [PolicyAction] {
        let counted = countedFailures(at: now)
        let count = counted.count
        let signature = counted.last?.signature
        let from = ledger.active
        escalationState.failures = []
        escalationState.consecutiveFailures = 0
        let rollbackFailed = rollbackWouldRepeat(signature)
        var message = "Agent \(settings.agent) failed \(count) times within \(Self.format(settings.failureWindowSeconds)) s on content \(from ?? "none"): crash loop."
        if rollbackFailed, let lastRollback {
            message += " Rolling back from \(lastRollback.from) did not help: it fails the same way (\(signature ?? "")), so the content is not switched again."
        }
        let decision = PolicyAction.record(Decision(
            .crashLoop, agent: settings.agent, version: from, signal: counted.last?.signal, failures: count,
            reason: rollbackFailed ? EscalationReason.rollbackDidNotHelp.rawValue : counted.last?.reason.rawValue,
            message: message))
        return [decision] + escalate(.crash, count: count, signature: signature, rollbackFailed: rollbackFailed, at: now)
    }

    /// A boot loop of `failedBoots` judged with the agent stopped (``AgentEvent/bootLoop(failedBoots:rowStartedAt:)``).
    private mutating func judgeBootLoop(failedBoots: Int, rowStartedAt: Date?, at now: Moment) -> [PolicyAction] {
        guard let active = ledger.active else { return [] }
        let inSafeMode = mode == .safeMode ? " in safe mode" : ""
        if ledger.candidate == nil, mode == .normal, let rowStartedAt,
           let promotedAt = ledger.record(active)?.promotedAt, promotedAt >= rowStartedAt,
           let previous = ledger.knownGoodNewestFirst.first(where: { $0 != active }) {
            let why = "the machine failed to boot \(failedBoots) times in a row with agent \(settings.agent) on content \(active), promoted in the first of those boots"
            return quarantineForBootLoop(
                active, failedBoots: failedBoots, assessed: "Boot loop: \(why); the boots before it ran known-good \(previous).",
                quarantined: "Quarantined content \(active) of agent \(settings.agent): \(why).", at: now)
                + rollBack(from: active, to: previous, reason: .bootLoop, failure: "failed-boot", at: now)
        }
        if ledger.candidate == nil || mode == .safeMode, !settings.bootLoopStopsAgent {
            let report = BootLoopRecord(failedBoots: failedBoots, version: active, at: now.wall)
            reportedBootLoop = report
            let decision = PolicyAction.record(Decision(
                .bootAssessed, agent: settings.agent, version: active, failures: failedBoots, reason: "boot-loop",
                message: "The machine failed to boot \(failedBoots) times in a row with agent \(settings.agent) on content \(active)\(inSafeMode): \(report.description); it keeps running on \(active) (boot_loop_stops_agent = false)."))
            return [decision] + spawnActive(at: now)
        }
        let signature = "failed-boot"
        let rollbackFailed = rollbackWouldRepeat(signature)
        var message = "The machine failed to boot \(failedBoots) times in a row with agent \(settings.agent) on content \(active)\(inSafeMode): boot loop."
        if rollbackFailed, let lastRollback {
            message += " Rolling back from \(lastRollback.from) did not help, so the content is not switched again."
        }
        let decision = PolicyAction.record(Decision(
            .bootAssessed, agent: settings.agent, version: active, failures: failedBoots,
            reason: rollbackFailed ? EscalationReason.rollbackDidNotHelp.rawValue : "boot-loop", message: message))
        return [decision] + escalate(.boot, count: failedBoots, signature: signature, rollbackFailed: rollbackFailed, at: now)
    }

    /// The machine failed to boot `failedBoots` times in a row (`boot_failure_threshold` or
    /// more) while a preflight instance of staged version `id` was running: `id` is quarantined
    /// (reason `boot-loop`), so it is not activated again without an operator's `release`.
    /// What the agent runs is not touched.
    public mutating func preflightBootLoop(_ id: String, failedBoots: Int, at now: Moment) -> [PolicyAction] {
        guard let record = ledger.record(id), record.standing == .staged else { return [] }
        return quarantineForBootLoop(
            id, failedBoots: failedBoots,
            assessed: "The machine failed to boot \(failedBoots) times in a row during a preflight of content \(id) of agent \(settings.agent): boot loop.",
            quarantined: "Quarantined content \(id) of agent \(settings.agent): the machine failed to boot \(failedBoots) times in a row during its preflight; the live agent never loaded it.",
            at: now)
    }

    /// Quarantines `id` for a boot loop of `failedBoots`, with its `boot-assessed` and
    /// `content-quarantined` entries (reason `boot-loop`) saying `assessed` and `quarantined`.
    private mutating func quarantineForBootLoop(
        _ id: String, failedBoots: Int, assessed: String, quarantined: String, at now: Moment
    ) -> [PolicyAction] {
        ledger.quarantine(id, reason: "boot-loop", at: now.wall)
        return [
            .record(Decision(.bootAssessed, agent: settings.agent, version: id, failures: failedBoots, reason: "boot-loop", message: assessed)),
            .record(Decision(.contentQuarantined, agent: settings.agent, version: id, failures: failedBoots, reason: "boot-loop", message: quarantined)),
            .collectGarbage,
        ]
    }

    /// What set off an escalation: failures within the window, or failed boots in a row.
    private enum Loop {
        case crash, boot

        /// `crash-loop` or `boot-loop`: the quarantine reason, and the reason of a rollback from a candidate.
        var reason: RollbackReason { self == .crash ? .crashLoop : .bootLoop }
        /// The reason of a rollback from a known-good version to an older one.
        var onKnownGood: RollbackReason { self == .crash ? .crashLoopOnKnownGood : .bootLoopOnKnownGood }
    }

    /// What a loop of `count` on `version` showed, for `status`: "3 failures within 120 s on
    /// content v1 (crashed SIGSEGV)", "2 failed boots in a row with the agent on content v1".
    private func evidence(of loop: Loop, count: Int, version: String?, signature: String?) -> String {
        let content = "content \(version ?? "none")\(mode == .safeMode ? " in safe mode" : "")"
        switch loop {
        case .crash:
            return "\(count) failures within \(Self.format(settings.failureWindowSeconds)) s on \(content)" + (signature.map { " (\($0))" } ?? "")
        case .boot:
            return "\(count) failed boots in a row with the agent on \(content)"
        }
    }

    /// The same failure again on the version a loop's rollback went to: switching versions
    /// does not help, so Backstop stops doing it (no ping-pong).
    private func rollbackWouldRepeat(_ signature: String?) -> Bool {
        mode == .normal && ledger.candidate == nil && ledger.active != nil && lastRollback?.to == ledger.active
            && lastRollback?.failure != nil && lastRollback?.failure == signature
    }

    /// The escalation ladder after a crash loop or a boot loop on the active content.
    private mutating func escalate(
        _ loop: Loop, count: Int, signature: String?, rollbackFailed: Bool, at now: Moment
    ) -> [PolicyAction] {
        let from = ledger.active
        let evidence = evidence(of: loop, count: count, version: from, signature: signature)
        if mode == .safeMode {
            let reason: EscalationReason = loop == .crash ? .safeModeCrashLoops : .safeModeBootLoops
            return giveUp(reason, explanation: reason.explanation, version: from, evidence: evidence, at: now)
        }
        if rollbackFailed {
            escalationState.rollbackDidNotHelp = true
            if let from { escalationState.escalationTried.append(from) }
            return enterSafeMode(.rollbackDidNotHelp, version: from, evidence: evidence, at: now)
        }
        if let candidate = ledger.candidate {
            ledger.quarantine(candidate, reason: loop.reason.rawValue, at: now.wall)
            let why = loop == .crash
                ? "it crash-looped in probation"
                : "the machine failed to boot \(count) times in a row with it in probation"
            var actions: [PolicyAction] = [.record(Decision(
                .contentQuarantined, agent: settings.agent, version: candidate, failures: count, reason: loop.reason.rawValue,
                message: "Quarantined content \(candidate) of agent \(settings.agent): \(why).")), .collectGarbage]
            guard let knownGood = ledger.knownGood else {
                // The first version: nothing to roll back to, and a quarantined version is never left active.
                ledger.deactivate()
                actions.append(.switchContent(version: nil))
                return actions + enterSafeMode(.noKnownGood, version: candidate, evidence: evidence, at: now)
            }
            return actions + rollBack(from: candidate, to: knownGood, reason: loop.reason, failure: signature, at: now)
        }
        if let from { escalationState.escalationTried.append(from) }
        if let older = ledger.knownGoodNewestFirst.first(where: { !escalationState.escalationTried.contains($0) }) {
            return rollBack(from: from ?? "none", to: older, reason: loop.onKnownGood, failure: signature, at: now)
        }
        return enterSafeMode(loop == .crash ? .knownGoodCrashLoops : .knownGoodBootLoops, version: from, evidence: evidence, at: now)
    }

    private mutating func rollBack(from: String, to: String, reason: RollbackReason, failure: String?, at now: Moment) -> [PolicyAction] {
        forgetRunHistory()
        ledger.activate(to)
        lastRollback = RollbackRecord(from: from, to: to, reason: reason, at: now.wall, failure: failure)
        return [
            .switchContent(version: to),
            .record(Decision(
                .rollback, agent: settings.agent, version: to, previousVersion: from, reason: reason.rawValue,
                message: "Rolled agent \(settings.agent) back from content \(from) to known-good \(to) (\(reason.rawValue)).")),
        ] + spawnActive(at: now)
    }

    /// Safe mode on `evidence` about `version`: the agent runs `safe_mode_exec`, or without
    /// one is given up.
    private mutating func enterSafeMode(_ reason: EscalationReason, version: String?, evidence: String, at now: Moment) -> [PolicyAction] {
        guard settings.hasSafeModeExec, ledger.active != nil else {
            let next: EscalationReason = settings.hasSafeModeExec ? .noContent : .noSafeModeExec
            let decision = PolicyAction.record(Decision(
                .safeMode, agent: settings.agent, version: version, reason: reason.rawValue,
                message: "Agent \(settings.agent) enters safe mode without starting: \(reason.explanation), and \(next.explanation)."))
            return [decision] + giveUp(
                next, explanation: "\(reason.explanation), and \(next.explanation)", version: version, evidence: evidence, at: now)
        }
        mode = .safeMode
        escalation = EscalationRecord(
            step: .safeMode, reason: reason, explanation: reason.explanation, evidence: evidence, version: version, at: now.wall)
        return [.record(Decision(
            .safeMode, agent: settings.agent, version: version, reason: reason.rawValue,
            message: "Agent \(settings.agent) enters safe mode: \(reason.explanation); starting it with safe_mode_exec."))]
            + spawnActive(at: now)
    }

    /// Gives up on `evidence` about `version`; `explanation` says why in a few words.
    private mutating func giveUp(
        _ reason: EscalationReason, explanation: String, version: String?, evidence: String, at now: Moment
    ) -> [PolicyAction] {
        phase = .givenUp
        escalation = EscalationRecord(
            step: .givenUp, reason: reason, explanation: explanation, evidence: evidence, version: version, at: now.wall)
        return [.record(Decision(
            .gaveUp, agent: settings.agent, version: version, reason: reason.rawValue,
            message: "Gave up on agent \(settings.agent): \(reason.explanation); it is left stopped, "
                + (ledger.active == nil
                    ? "until a version is released or staged and activated."
                    : "until the cause is fixed and `backstopctl reset-failed \(settings.agent)` is run.")))]
    }

    private mutating func scheduleRestart(at now: Moment) -> [PolicyAction] {
        phase = .backoff
        let delay = Self.restartDelaySeconds(consecutiveFailures: escalationState.consecutiveFailures, settings: settings)
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
        case .daemonized:
            phase = .stopping(.restart)
            return [.terminate(signal: SIGTERM)]
        case .stopping(.operatorStop), .stopping(.shutdown):
            return []
        case .stopping:
            phase = .stopping(.restart)
            return []
        case .stopped, .backoff, .restarting, .givenUp, .awaitingDependency:
            return disarm([.restart]) + spawnActive(at: now)
        }
    }

    /// Starts a run on the active version, unless there is none to run or an operator stopped the agent.
    private mutating func spawnActive(at now: Moment) -> [PolicyAction] {
        guard let active = ledger.active, ledger.record(active)?.standing != .quarantined, !operatorStopped, storeRefusal == nil else {
            phase = .stopped
            return []
        }
        phase = .starting(StartingRun())
        runningVersion = active
        return [.spawn(version: active, mode: mode)]
    }

    /// Another version becomes active: the failures, the backoff and the healthy
    /// time of the runs so far belong to the version that ran, not to the next one.
    private mutating func forgetRunHistory() {
        escalationState.forgetRuns()
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
        disarm([.startTimeout, .startedAfter, .watchdog, .probation, .backoffReset, .readyCheck, .healthCheck])
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

    /// The `agent-exited` decision, with `reason` nil for an exit Backstop asked for. For a
    /// failure that counts it carries the window's count including this one.
    private func recordExit(
        _ termination: Termination, version: String?, reason: FailureReason?, attribution: Attribution? = nil,
        obstacle: SandboxObstacle? = nil, at now: Moment
    ) -> PolicyAction {
        let content = version ?? "none"
        var message: String
        var counted: Int?
        let attribution = attribution ?? reason.map(settings.attribution(of:))
        switch attribution {
        case nil:
            message = "Agent \(settings.agent) stopped as asked (\(termination.description))."
        case .content?:
            counted = countedFailures(at: now).count + 1
            message = "Agent \(settings.agent) failed (\(reason!.rawValue)): \(termination.description) on content \(content)."
        case .restartOnly?:
            message = "Agent \(settings.agent) ended (\(reason!.rawValue)): \(termination.description) on content \(content); restarting it without blaming the content."
        case .configuration?:
            message = "Agent \(settings.agent) cannot be supervised as configured (\(reason!.rawValue)): \(termination.description) on content \(content)."
        }
        if let reason, let remedy = reason.remedy, reason == .oomKilled || attribution != .content {
            message += " " + remedy.prefix(1).uppercased() + remedy.dropFirst() + "."
        }
        if reason != nil, let obstacle { message += " " + obstacle.sentence(agent: settings.agent) }
        return .record(Decision(
            .agentExited, agent: settings.agent, version: version, exitStatus: termination.exitStatus,
            signal: termination.signal, coreDumped: termination.coreDumped, failures: counted,
            reason: reason?.rawValue, message: message))
    }

    static func format(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(format: "%.1f", seconds)
    }
}
