import CLinux
import CSystemd
import Foundation
import Logging

/// Errors of control requests, named as the Varlink errors they become.
public enum ManagerError: Error, Equatable, CustomStringConvertible {
    case noSuchAgent(String)
    case policy(PolicyError)
    case store(StoreError)
    /// The version failed its preflight (how) and is quarantined; the live agent never saw it.
    case preflightFailed(String, String)
    /// The version's preflight could not run (why); it is neither activated nor quarantined.
    case preflightCouldNotRun(String, String)
    case shuttingDown

    /// One sentence for operators; the `message` parameter of the Varlink error.
    public var description: String {
        switch self {
        case .noSuchAgent(let name): return "no agent \"\(name)\" is configured"
        case .policy(let error): return error.description
        case .store(let error): return error.description
        case .preflightFailed(let id, let detail): return "content \(id) failed preflight (\(detail)) and is quarantined; the live agent never loaded it"
        case .preflightCouldNotRun(let id, let detail): return "the preflight of content \(id) could not run (\(detail)); it is not activated"
        case .shuttingDown: return "backstopd is shutting down"
        }
    }
}

/// Everything about one supervised agent that the daemon keeps in memory.
struct AgentSlot {
    let configuration: AgentConfiguration
    let store: ContentStore
    var policy: AgentPolicy
    /// Bumped at every spawn; events of older runs are ignored.
    var generation = 0
    var pid: Int32?
    var timers: [PolicyTimer: Task<Void, Never>] = [:]
    var killEscalation: Task<Void, Never>?
    /// The current run's notify socket (one per run) and the task that feeds its datagrams to the actor.
    var notifySocket: NotifySocket?
    var notifyPump: Task<Void, Never>?
    var statusText: String?
    var bootHealthTimer: Task<Void, Never>?
    var bootHealthy = false
    /// Whether the current run is in a transient scope of its own, whose cgroup holds its `memory_max`.
    var inScope = false
    /// The OOM kills counted in backstopd's slice (where the scope is) when the run was put in
    /// its scope; more at its end, with the agent killed by SIGKILL, means its scope had one.
    var sliceOOMKillsAtStart: Int?
    /// When the current run started, on CLOCK_MONOTONIC in microseconds (the kernel log's clock).
    var startedAtKernelMicroseconds: UInt64 = 0
    /// Processes a `daemonized` agent left running in the background.
    var strays: Set<Int32> = []
    /// The session of the run that left ``strays``, to find what they leave in turn.
    var straySession: Int32?
    /// Probe processes running for the current run, by probe.
    var probePIDs: [Probe: Int32] = [:]
    /// Whether a failed ready check was logged in the current run (the rest go to debug).
    var readyCheckFailureSaid = false
    /// Why the last switch of the active link or `content_link` failed, nil after one that
    /// worked: the agent is not started on content it cannot find there (a setup failure).
    var contentSwitchError: String?
    /// A backoff restored from the state file (monotonic deadline, same boot).
    var restartDue: Double?
    /// Notify datagrams that came while the agent was starting, before its pid was known.
    var notifiedEarly: [NotifyMessage] = []
    /// With `runner = "systemd"`: the unit and what Backstop knows of its current run.
    var unit: UnitHost?
    /// What the state file holds, so that an unchanged state is not written again.
    var savedState: AgentStateFile?
    /// The versions with a quarantine mark on disk (``ContentStore/addQuarantineMarks(for:marked:)``).
    var quarantineMarks: Set<String> = []
    /// Why the store cannot be used: the agent is not started, and nothing in its store is
    /// read, written or removed until a restart finds it sound. Nil when it can.
    var storeRefusal: StoreError?
}

/// The daemon's core: owns every agent's policy, runs the actions it asks for, and
/// answers control requests. One actor, so every event is handled in order.
public actor Supervisor {
    /// The configuration the daemon runs with (the one it started with, or the last one a
    /// reload applied); one slot per `[[agent]]`.
    public internal(set) var configuration: Configuration
    /// Why the configuration file itself is not what runs (it does not load; see
    /// ``EffectiveConfiguration``); nil when it is. Makes the daemon degraded in `status`.
    public internal(set) var configurationProblem: ConfigurationProblem?
    /// Who waits for an agent's processes (or its transient unit) to be gone: a reload retiring it.
    var agentStopWaiters: [String: [CheckedContinuation<Void, Never>]] = [:]
    let logger: Logger
    let bootID: String
    var slots: [String: AgentSlot] = [:]
    var shuttingDown = false
    private var bootGood = false
    private var bootLog = BootLog()
    private var stopWaiters: [CheckedContinuation<Void, Never>] = []
    /// The connection to systemd's manager, for agents' units and the transient scopes of
    /// sandboxed agents; nil when none needs it, or systemd cannot be reached.
    var systemd: UnitBus?
    /// Operator requests per agent are carried out one at a time, in the order they arrived.
    private var turnsTaken: [String: Int] = [:]
    private var turnsServed: [String: Int] = [:]
    private var turnWaiters: [String: [Int: CheckedContinuation<Void, Never>]] = [:]

    /// Grace between SIGTERM (or SIGABRT for a hang) and SIGKILL, in seconds.
    public static let terminationGraceSeconds: Double = 5

    /// The service backstopd runs as (sd_pid_get_unit(3)), such as `backstopd.service`;
    /// nil when it is not run by systemd as a service.
    static let daemonUnit: String? = {
        var unit: UnsafeMutablePointer<CChar>?
        guard sd_pid_get_unit(0, &unit) >= 0, let unit else { return nil }
        defer { free(unit) }
        let name = String(cString: unit)
        return name.hasSuffix(".service") ? name : nil
    }()

    /// What every transient unit made for an agent gets, so that systemd stops it only after
    /// backstopd at shutdown (the inverse of `Before=`): backstopd stops the agent itself,
    /// as a stop it asked for, instead of seeing it end under it and restarting it.
    static var orderedBeforeDaemon: [(String, BusValue)] {
        daemonUnit.map { [("Before", .strings([$0]))] } ?? []
    }

    /// - Throws: `Errno` when the boot ID cannot be read.
    public init(configuration: Configuration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        self.bootID = try BootID.current()
    }

    // MARK: - Lifecycle

    /// Prepares the directories, restores each agent's state (recovering the store and
    /// killing an agent left behind by a crashed daemon) and starts the agents.
    /// - Throws: the error of creating the state or runtime directory.
    public func start() throws {
        try DurableFile.makeDirectories(configuration.daemon.stateDirectory, mode: 0o755)
        // Root's alone: a notify socket is reached through the sandbox it is bound into.
        try DurableFile.makeDirectories(configuration.daemon.notifyDirectory, mode: 0o700)
        chmod(configuration.daemon.notifyDirectory, 0o700)
        do {
            try ChildReaper.shared.start { pid in Task { await self.adoptedChildReaped(pid) } }
        } catch {
            logger.error("Cannot become a child subreaper; processes an agent leaves in the background are not tracked.",
                         metadata: ["error": "\(error)"])
        }
        if configuration.agents.contains(where: { $0.runner == .direct || $0.preflightSeconds > 0 }) {
            if let reason = BubblewrapSandbox.unavailableReason {
                logger.error("Agents run by backstopd cannot be sandboxed, so they will not start.", metadata: ["error": "\(reason)"])
            }
            if sd_booted() > 0 {
                do { systemd = try UnitBus() } catch {
                    logger.warning("Cannot reach systemd for the agents' transient scopes; their limits are rlimits only.",
                                   metadata: ["error": "\(error)"])
                }
            }
            do { try BubblewrapSandbox.preparePlaceholders(in: configuration.daemon.placeholderDirectory) } catch {
                logger.error("Cannot create the placeholders of inaccessible paths; sandboxes that hide paths will fail to start.",
                             metadata: ["path": "\(configuration.daemon.placeholderDirectory)", "error": "\(error)"])
            }
        }
        let now = Moment.now()
        for agent in configuration.agents {
            slots[agent.name] = restore(agent, at: now)
        }
        let unwatchable = attachUnits(configuration.agents)
        stopUnconfiguredAgents()
        // Boot assessment, before any agent starts: at the first start in a boot the
        // previous boot is judged, and a boot loop is broken before the agent runs again.
        do { bootLog = try BootLog.load(stateDirectory: configuration.daemon.stateDirectory) } catch {
            let aside = BootLog.setAside(stateDirectory: configuration.daemon.stateDirectory)
            logger.error("The boot log is unreadable; it was set aside and a new one begins, so the previous boot cannot be judged.",
                         metadata: ["path": "\(error.path)", "set_aside_to": "\(aside ?? "(could not be moved)")", "error": "\(error.reason)"])
            bootLog = BootLog()
        }
        let verdict = bootLog.enter(BootRecord(
            id: bootID, startedAt: now.wall, state: "pending", agents: slots.mapValues { Self.bootRecord(of: $0.policy) }))
        bootGood = bootLog.state(of: bootID) == "good"
        if let verdict { recordVerdict(verdict) }
        for agent in configuration.agents where !unwatchable.contains(agent.name) {
            // A boot that ended during a preflight counts against the version preflighted.
            if verdict?.state == "failed", let preflighted = verdict?.record.agents?[agent.name]?.preflight {
                let failedBoots = bootLog.failedPreflightBootsInARow(agent: agent.name, version: preflighted, before: bootID)
                if failedBoots >= agent.bootFailureThreshold {
                    apply(slots[agent.name]!.policy.preflightBootLoop(preflighted, failedBoots: failedBoots, at: now), to: agent.name)
                }
            }
            let policy = slots[agent.name]!.policy
            let row = verdict == nil
                ? [] : bootLog.failedBootRow(agent: agent.name, running: Self.bootRecord(of: policy), before: bootID)
            if row.count >= agent.bootFailureThreshold {
                apply(slots[agent.name]!.policy.handle(.bootLoop(failedBoots: row.count, rowStartedAt: row.last?.startedAt), at: now), to: agent.name)
            } else {
                let restartDue = slots[agent.name]!.restartDue
                apply(slots[agent.name]!.policy.handle(.begin(restartDueMonotonicSeconds: restartDue), at: now), to: agent.name)
            }
            persist(agent.name)
            // keep_versions may have been lowered since the last run.
            Task { await self.collectGarbage(agent.name) }
        }
        saveBootLog()
    }

    /// What an agent runs, as the boot log keeps it.
    private static func bootRecord(of policy: AgentPolicy) -> BootAgentRecord {
        BootAgentRecord(active: policy.ledger.active, candidate: policy.ledger.candidate, mode: policy.mode, started: false)
    }

    /// One `boot-assessed` entry per agent for the verdict on the previous boot.
    private func recordVerdict(_ verdict: BootVerdict) {
        let failedInARow = bootLog.consecutiveFailed(before: bootID)
        for agent in configuration.agents {
            let version = verdict.record.agents?[agent.name]?.active ?? verdict.record.versions[agent.name]
            var message = "The previous boot \(verdict.record.id) was \(verdict.state): \(verdict.explanation)."
            if verdict.state == "failed" {
                let threshold = "boot_failure_threshold \(agent.bootFailureThreshold)"
                message += " Failed boots in a row: \(failedInARow)"
                if let running = verdict.record.agents?[agent.name], let preflighted = running.preflight {
                    let withPreflight = bootLog.failedPreflightBootsInARow(agent: agent.name, version: preflighted, before: bootID)
                    message += "; it counts against content \(preflighted) of agent \(agent.name), whose preflight was running, not against \(version ?? "none"): \(withPreflight) (\(threshold))."
                } else if let running = verdict.record.agents?[agent.name], !verdict.record.countsAgainstContent(of: agent.name) {
                    let why = running.started == false ? "the agent was not started"
                        : verdict.record.otherAgentOnTrial(than: agent.name).map { "agent \($0) had content on trial" }
                        ?? "the boot reached boot-good with no candidate in probation"
                    message += "; it is no evidence against content \(version ?? "none") of agent \(agent.name) (\(why))."
                } else {
                    // The row a boot loop is judged on: boots that count against this content.
                    let withAgent = verdict.record.agents?[agent.name].map {
                        bootLog.failedBootsInARow(agent: agent.name, running: $0, before: bootID)
                    } ?? failedInARow
                    message += "; with agent \(agent.name) started on content \(version ?? "none"): \(withAgent) (\(threshold))."
                }
            }
            record(Decision(
                .bootAssessed, agent: agent.name, version: version, failures: verdict.state == "failed" ? failedInARow : nil,
                bootID: verdict.record.id, reason: verdict.state, message: message))
        }
    }

    /// Stops every agent (SIGTERM, grace, SIGKILL) and returns when all have exited.
    public func shutdown() async {
        guard !shuttingDown else { return }
        shuttingDown = true
        // A preflight under way ends now, with its namespace: its outcome no longer counts.
        for slot in slots.values {
            for pid in ProcessTable.processes(withEnvironment: LaunchRequest.preflightStoreVariable, value: slot.store.root) {
                DirectRunner.signalGroup(pid, SIGKILL)
            }
        }
        let now = Moment.now()
        for name in slots.keys.sorted() {
            cancelTimers(name)
            // A unit is systemd's to run: it goes on without backstopd (and is watched again at the next start).
            if slots[name]!.unit == nil { apply(slots[name]!.policy.handle(.shutdown, at: now), to: name) }
            persist(name)
        }
        if !allStopped {
            await withCheckedContinuation { stopWaiters.append($0) }
        }
        for name in slots.keys {
            slots[name]?.notifySocket?.invalidate()
            slots[name]?.notifyPump?.cancel()
            slots[name]?.unit?.pump.cancel()
            stopAwaiting(name)
            stopProbes(name)
            persist(name)
        }
        // Anything else re-parented here descends from an agent: none outlives the daemon.
        for pid in ProcessTable.adoptedChildren(isStartedHere: ChildReaper.shared.isKnown) {
            logger.warning("Killing pid \(pid), left behind by an agent.", metadata: ["pid": "\(pid)"])
            kill(pid, SIGKILL)
        }
        detachUnits()
        // Every agent is stopped: this boot did not end in a crash.
        bootLog.markCleanShutdown(bootID)
        saveBootLog()
    }

    private var allStopped: Bool {
        slots.values.allSatisfy(Self.isStopped)
    }

    /// Whether nothing of the slot's runs is left (a unit is systemd's to run, so it counts as stopped).
    static func isStopped(_ slot: AgentSlot) -> Bool {
        slot.unit != nil || (slot.pid == nil && slot.strays.isEmpty && !slot.policy.phase.isStarting && !slot.policy.isStopping)
    }

    func resumeStopWaitersIfDone() {
        if shuttingDown, allStopped {
            stopWaiters.forEach { $0.resume() }
            stopWaiters = []
        }
        // (A unit's waiters are resumed by its watcher's report that it is down.)
        for (name, waiters) in agentStopWaiters where slots[name].map({ $0.unit == nil && Self.isStopped($0) }) != false {
            waiters.forEach { $0.resume() }
            agentStopWaiters[name] = nil
        }
    }

    /// Returns as soon as the actor is free: the watchdog's proof that supervision is not wedged.
    public func heartbeat() {}

    // MARK: - Control requests

    /// The status of the daemon and of every agent (or only `agent`).
    /// - Throws: ``ManagerError/noSuchAgent(_:)``.
    public func status(agent: String? = nil) throws(ManagerError) -> StatusReport {
        if let agent, slots[agent] == nil { throw .noSuchAgent(agent) }
        let now = Moment.now()
        // In file order; an agent a reload is retiring or admitting right now is left out.
        let agents = configuration.agents.map(\.name).filter { agent == nil || $0 == agent }.compactMap { slots[$0] }.map { slot in
            StatusReport.Agent(policy: slot.policy, pid: slot.pid ?? slot.strays.min(), statusText: slot.statusText, at: now)
        }
        return StatusReport(
            daemon: .init(running: true, pid: getpid(), version: Backstop.version, configuration: configurationStatus),
            boot: .init(id: bootID, state: bootGood ? "good" : "pending", consecutiveFailed: bootLog.consecutiveFailed(before: bootID)),
            agents: agents)
    }

    /// The recent boots, oldest first.
    public func boots() -> [BootRecord] {
        bootLog.boots
    }

    private func saveBootLog() {
        do { try bootLog.save(stateDirectory: configuration.daemon.stateDirectory) } catch {
            logger.error("Cannot write the boot log.", metadata: ["error": "\(error)"])
        }
    }

    /// The versions of `agent`, in staging order.
    /// - Throws: ``ManagerError/noSuchAgent(_:)``.
    public func versions(agent: String) throws(ManagerError) -> [VersionRecord] {
        try slot(agent).policy.ledger.versions
    }

    /// Copies the open `bundle` into the agent's store as a new version (``ContentStore/stage(from:id:existing:quarantined:rules:at:)``),
    /// and activates it when asked. The copy runs off the actor, so supervision goes on
    /// meanwhile; the caller keeps the bundle open until this returns, and closes it.
    /// - Throws: ``ManagerError`` with the store's or the policy's reason.
    /// - Parameter callerCapabilities: the caller's effective capabilities (bit N for
    ///   capability N): the copy reads with no capability the caller lacks, so a root caller
    ///   without `CAP_DAC_READ_SEARCH` cannot have a file it may not read copied for it.
    public func stage(
        agent: String, bundle: OpenBundle, version: String?, activate: Bool, callerCapabilities: UInt64 = .max
    ) async throws(ManagerError) -> VersionRecord {
        let store = try usableSlot(agent).store
        let rules = try slot(agent).configuration.stagingRules
        let ledger = try slot(agent).policy.ledger
        let existing = Set(ledger.versions.map(\.id))
        let quarantined = ledger.quarantinedByDigest
        // On a thread of its own, not the tasks' shared pool: a read that blocks (a file on a
        // network file system, a FIFO swapped in) holds up this staging only, never supervision.
        let result = await withCheckedContinuation { (done: CheckedContinuation<Result<VersionRecord, StoreError>, Never>) in
            Thread {
                // This thread's credentials only; it ends with the staging.
                guard backstop_thread_limit_effective_capabilities(callerCapabilities) == 0 else {
                    done.resume(returning: .failure(.io(path: bundle.path, operation: "take on the caller's capabilities", errno: errno)))
                    return
                }
                done.resume(returning: Result { () throws(StoreError) in
                    try store.stage(from: bundle, id: version, existing: existing, quarantined: quarantined, rules: rules, at: Date())
                })
            }.start()
        }
        let record: VersionRecord
        switch result {
        case .success(let staged): record = staged
        case .failure(let error): throw .store(error)
        }
        guard !shuttingDown else { throw .shuttingDown }
        // A reload removed the agent meanwhile: its files stay in the store, adopted as staged if it returns.
        guard slots[agent] != nil else { throw .noSuchAgent(agent) }
        apply(slots[agent]!.policy.staged(record), to: agent)
        if activate { try await self.activate(agent: agent, version: record.id) }
        return record
    }

    /// Verifies version `id` and makes it active; the agent restarts on it.
    /// - Throws: ``ManagerError`` (no such agent or version, quarantined, or failed verification).
    public func activate(agent: String, version id: String) async throws(ManagerError) {
        try await inTurn(agent) { () async throws(ManagerError) in
            let current = try usableSlot(agent)
            if let refusal = current.policy.activationRefusal(id) { throw .policy(refusal) }
            guard let record = current.policy.ledger.record(id) else { throw .policy(.noSuchVersion(id)) }
            try await verify(record, in: current.store)
            if current.configuration.preflightSeconds > 0, record.standing == .staged {
                try await preflight(agent, version: id)
            }
            try operate(agent) { policy, now throws(PolicyError) in try policy.activate(id, at: now) }
        }
    }

    /// Runs the preflight of staged version `id` (``Preflight``) off the actor; the caller holds
    /// the agent's turn, so two never run at once for one agent. A version that fails is judged
    /// against a control: the same preflight on the active (or else the last known-good) version;
    /// only when the control passes is the failure the version's (``AgentPolicy/preflightFailed(_:reason:detail:control:at:)``).
    /// - Throws: ``ManagerError/preflightFailed(_:_:)`` after quarantining a version that failed
    ///   where its control passed; ``ManagerError/preflightCouldNotRun(_:_:)`` when the instance
    ///   could not run at all (nothing is quarantined). Returns normally when the version passed,
    ///   or when the preflight cannot judge it (then it is activated under probation).
    private func preflight(_ agent: String, version id: String) async throws(ManagerError) {
        let slot = try slot(agent)
        let seconds = slot.configuration.preflightSeconds
        // On disk before the instance starts: a machine that dies during it blames this version.
        if bootLog.markPreflight(agent, version: id, in: bootID) { saveBootLog() }
        synchronizeJournal(before: "the preflight of content \(id) for agent \(agent) starts")
        logger.notice("Preflight of content \(id) for agent \(agent): a throwaway sandboxed instance runs it for \(seconds) s.",
                      metadata: ["agent": "\(agent)", "version": "\(id)"])
        let outcome = await Preflight.run(agent: slot.configuration, daemon: configuration.daemon, store: slot.store, version: id) { pid in
            await self.confineInScope(agent, pid: pid)
        }
        if bootLog.markPreflight(agent, version: nil, in: bootID) { saveBootLog() }
        guard !shuttingDown else { throw .shuttingDown }
        switch outcome {
        case .passed:
            logger.notice("Content \(id) of agent \(agent) passed preflight.", metadata: ["agent": "\(agent)", "version": "\(id)"])
        case .failed(let reason, let detail, let output):
            let control = try await preflightControl(agent, failed: id, detail: detail)
            apply(slots[agent]!.policy.preflightFailed(
                id, reason: reason, detail: Self.withLastLine(detail, of: output), control: control, at: Moment.now()), to: agent)
            persist(agent)
            guard case .passed = control else { return }
            throw .preflightFailed(id, detail)
        case .couldNotRun(let detail):
            logger.error("The preflight of content \(id) for agent \(agent) could not run; the version is not activated.",
                         metadata: ["agent": "\(agent)", "version": "\(id)", "error": "\(detail)"])
            throw .preflightCouldNotRun(id, detail)
        }
    }

    /// Runs the control of a failed preflight of `id`: the same preflight on the last known-good
    /// version, or else the active one (a candidate not quarantined, for an agent with no
    /// known-good version yet); `.none` when there is neither. A candidate still on trial is
    /// no control while a proven version exists.
    /// - Throws: ``ManagerError/shuttingDown``.
    private func preflightControl(_ agent: String, failed id: String, detail: String) async throws(ManagerError) -> PreflightControl {
        let slot = try slot(agent)
        let ledger = slot.policy.ledger
        let active = ledger.active.flatMap { ledger.record($0)?.standing == .quarantined ? nil : $0 }
        guard let control = ledger.knownGood ?? active, control != id else { return .none }
        logger.notice("Content \(id) of agent \(agent) failed preflight (\(detail)); running content \(control) through the same preflight as a control.",
                      metadata: ["agent": "\(agent)", "version": "\(id)", "control": "\(control)"])
        let outcome = await Preflight.run(agent: slot.configuration, daemon: configuration.daemon, store: slot.store, version: control) { pid in
            await self.confineInScope(agent, pid: pid)
        }
        guard !shuttingDown else { throw .shuttingDown }
        switch outcome {
        case .passed:
            return .passed(version: control)
        case .failed(_, let detail, let output):
            return .failed(version: control, detail: Self.withLastLine(detail, of: output), obstacle: SandboxObstacle.find(in: output))
        case .couldNotRun(let detail):
            return .failed(version: control, detail: "could not run: \(detail)", obstacle: nil)
        }
    }

    /// "exit code 1; its last output: connect: Connection refused", or `detail` alone without output
    /// (the sandbox shell's own report of how its child ended is not the agent's output).
    static func withLastLine(_ detail: String, of output: String) -> String {
        guard let line = output.split(whereSeparator: \.isNewline).last(where: {
            !$0.allSatisfy(\.isWhitespace) && !$0.hasPrefix(BubblewrapSandbox.shellName + ":")
        }) else { return detail }
        return detail + "; its last output: \"\(line.prefix(200))\""
    }

    /// Promotes `id` to known-good now.
    /// - Throws: ``ManagerError``.
    public func promote(agent: String, version id: String) async throws(ManagerError) {
        try await inTurn(agent) { () throws(ManagerError) in
            try operate(agent) { policy, now throws(PolicyError) in try policy.promote(id, at: now) }
        }
    }

    /// Rolls back to `target`, or to the last known-good version, once its files are verified.
    /// - Returns: the version now active.
    /// - Throws: ``ManagerError``.
    @discardableResult
    public func rollback(agent: String, to target: String?) async throws(ManagerError) -> String? {
        try await inTurn(agent) { () async throws(ManagerError) in
            let current = try usableSlot(agent)
            let ledger = current.policy.ledger
            if let destination = target ?? ledger.knownGoodNewestFirst.first(where: { $0 != ledger.active }),
                let record = ledger.record(destination)
            {
                try await verify(record, in: current.store)
            }
            try operate(agent) { policy, now throws(PolicyError) in try policy.rollback(to: target, at: now) }
        }
        return slots[agent]?.policy.ledger.active
    }

    /// Removes the files of versions beyond `keep_versions` (``ContentLedger/garbage(keeping:)``),
    /// in turn with the operator's requests. Each is first renamed out of `versions/`, then
    /// the state records it, then its tree is deleted off the actor; an interruption
    /// anywhere is finished by startup recovery.
    func collectGarbage(_ name: String) async {
        try? await inTurn(name) { () throws(ManagerError) in
            guard !shuttingDown, let slot = slots[name] else { return }
            var removed: [String] = []
            var trash: [String] = []
            let garbage = slot.policy.ledger.garbage(keeping: slot.configuration.keepVersions)
            guard !garbage.isEmpty else { return }
            // Said before it is done: a daemon killed between the steps leaves the word behind.
            logger.notice("Removing the files of old versions (keep_versions = \(slot.configuration.keepVersions)).",
                          metadata: ["agent": "\(name)", "versions": "\(garbage.joined(separator: ","))"])
            for id in garbage {
                do throws(StoreError) {
                    trash.append(try slot.store.discard(id))
                    slots[name]!.policy.filesRemoved(id, at: Date())
                    removed.append(id)
                } catch {
                    logger.error("Cannot remove an old version.", metadata: ["agent": "\(name)", "version": "\(id)", "error": "\(error)"])
                }
            }
            guard !removed.isEmpty else { return }
            persist(name)
            logger.info("Removed the files of old versions.", metadata: ["agent": "\(name)", "versions": "\(removed.joined(separator: ","))"])
            let store = slot.store
            Task.detached(priority: .background) { try? store.removeFromStaging(trash) }
        }
    }

    /// Checks a version's files against its digest off the actor.
    private func verify(_ record: VersionRecord, in store: ContentStore) async throws(ManagerError) {
        let failure = await Task.detached { () -> StoreError? in
            do throws(StoreError) { try store.verify(record); return nil } catch { return error }
        }.value
        if let failure { throw .store(failure) }
    }

    /// Lifts the quarantine of `id`.
    /// - Throws: ``ManagerError``.
    public func release(agent: String, version id: String) async throws(ManagerError) {
        try await inTurn(agent) { () throws(ManagerError) in
            try operate(agent) { policy, _ throws(PolicyError) in try policy.release(id) }
        }
    }

    /// Clears failures and the degraded mark of `agent` (or of all agents); a given-up agent starts again.
    /// - Throws: ``ManagerError/noSuchAgent(_:)``.
    public func resetFailed(agent: String?) async throws(ManagerError) {
        let names = try agent.map { name throws(ManagerError) in _ = try slot(name); return [name] } ?? slots.keys.sorted()
        for name in names {
            try await inTurn(name) { () throws(ManagerError) in
                try operate(name) { policy, now in policy.handle(.resetFailed, at: now) }
            }
        }
    }

    /// Stops `agent` (and what it left in the background) and keeps it stopped until ``start(agent:)``.
    /// - Throws: ``ManagerError/noSuchAgent(_:)``, ``ManagerError/shuttingDown``.
    public func stop(agent: String) async throws(ManagerError) {
        try await inTurn(agent) { () throws(ManagerError) in
            try operate(agent) { policy, now in policy.handle(.stop, at: now) }
        }
    }

    /// Starts `agent` now: after an operator stop, during a backoff, or after it was given up.
    /// - Returns: the agent's state word afterwards (`starting` when it was started) and,
    ///   when it was not started, why not (its degraded reason), if there is one.
    /// - Throws: ``ManagerError/noSuchAgent(_:)``, ``ManagerError/shuttingDown``.
    @discardableResult
    public func start(agent: String) async throws(ManagerError) -> (state: String, reason: String?) {
        try await inTurn(agent) { () throws(ManagerError) in
            try operate(agent) { policy, now in policy.handle(.start, at: now) }
        }
        let policy = slots[agent]!.policy
        return (policy.stateWord, policy.degradedReason)
    }

    /// Runs `request` after every earlier operator request for `agent` has finished, so that
    /// requests that wait (verification runs off the actor) are still applied in arrival order.
    func inTurn(_ agent: String, _ request: () async throws(ManagerError) -> Void) async throws(ManagerError) {
        _ = try slot(agent)
        let ticket = turnsTaken[agent, default: 0]
        turnsTaken[agent] = ticket + 1
        if turnsServed[agent, default: 0] != ticket {
            await withCheckedContinuation { turnWaiters[agent, default: [:]][ticket] = $0 }
        }
        defer {
            turnsServed[agent] = ticket + 1
            turnWaiters[agent]?.removeValue(forKey: ticket + 1)?.resume()
        }
        try await request()
    }

    private func operate(
        _ agent: String, _ change: (inout AgentPolicy, Moment) throws(PolicyError) -> [PolicyAction]
    ) throws(ManagerError) {
        _ = try usableSlot(agent)
        guard !shuttingDown else { throw .shuttingDown }
        let actions: [PolicyAction]
        do { actions = try change(&slots[agent]!.policy, Moment.now()) } catch { throw .policy(error) }
        apply(actions, to: agent)
        persist(agent)
    }

    /// The slot of `name` when its store can be used.
    /// - Throws: ``ManagerError/noSuchAgent(_:)``; ``ManagerError/store(_:)`` with the refusal of its store.
    private func usableSlot(_ name: String) throws(ManagerError) -> AgentSlot {
        let slot = try slot(name)
        if let refusal = slot.storeRefusal { throw .store(refusal) }
        return slot
    }

    private func slot(_ name: String) throws(ManagerError) -> AgentSlot {
        guard let slot = slots[name] else { throw .noSuchAgent(name) }
        return slot
    }

    // MARK: - Process events

    private func processStarted(_ name: String, generation: Int, pid: Int32) {
        guard slots[name]?.generation == generation else { return }
        slots[name]!.pid = pid
        RunRecord(runtimeDirectory: configuration.daemon.runtimeDirectory, agent: name).started(pid)
        slots[name]!.inScope = confineInScope(name, pid: pid)
        slots[name]!.sliceOOMKillsAtStart = slots[name]!.inScope ? Cgroup.ownSlice.flatMap { Cgroup.oomKills(in: $0.directory) } : nil
        // (A stop asked for while the process was being created terminates it now.)
        let stopping = slots[name]!.policy.isStopping
        apply(slots[name]!.policy.handle(.agentStarted(pid: pid), at: Moment.now()), to: name)
        if !stopping {
            let early = slots[name]!.notifiedEarly
            slots[name]!.notifiedEarly = []
            early.forEach { notified(name, generation: generation, $0) }
        }
        persist(name)
    }

    /// - Parameter obstacle: what the end of the run's stderr names as being in its way.
    private func processEnded(_ name: String, generation: Int, result: Result<Termination, LaunchError>, obstacle: SandboxObstacle? = nil) {
        guard slots[name]?.generation == generation else { return }
        let leader = slots[name]!.pid
        slots[name]!.pid = nil
        RunRecord(runtimeDirectory: configuration.daemon.runtimeDirectory, agent: name).ended()
        slots[name]!.killEscalation?.cancel()
        slots[name]!.bootHealthTimer?.cancel()
        slots[name]!.statusText = nil
        stopProbes(name)
        let now = Moment.now()
        switch result {
        case .success(let termination):
            let policy = slots[name]!.policy
            let unasked = policy.phase.isStarting || policy.phase.isRunning
            let survivors = leader.map { leftovers(of: name, session: $0) } ?? []
            // An agent that forked into the background keeps running there until it ends or
            // is stopped; anything else an agent leaves behind ends with it.
            let daemonized = unasked && termination == .exited(code: 0) && !survivors.isEmpty
            if !daemonized, let leader {
                DirectRunner.signalGroup(leader, SIGKILL)
                ProcessTable.kill(survivors) { self.leftovers(of: name, session: leader) }
            }
            let memoryMax = slots[name]!.configuration.sandbox.memoryMaxBytes
            let killer = unasked && termination.signal == SIGKILL
                ? leader.flatMap { KernelLog.oomKill(of: $0, sinceMonotonicMicroseconds: slots[name]!.startedAtKernelMicroseconds) } : nil
            var oomKill = killer.map { killer -> OOMKill in
                guard killer == .memoryCgroup, slots[name]!.inScope, let memoryMax else { return .machine }
                return .memoryMax(bytes: memoryMax)
            }
            // Where the kernel log cannot be read (a container's /dev/kmsg is not the kernel's),
            // memory.events says it: the scope is gone by now, but its slice counted the kill.
            if oomKill == nil, unasked, termination.signal == SIGKILL, slots[name]!.inScope, let memoryMax,
               let before = slots[name]!.sliceOOMKillsAtStart,
               let after = Cgroup.ownSlice.flatMap({ Cgroup.oomKills(in: $0.directory) }), after > before {
                oomKill = .memoryMax(bytes: memoryMax)
            }
            apply(slots[name]!.policy.handle(.agentExited(
                termination, oomKill: oomKill, memoryRlimitBytes: BubblewrapSandbox.memoryCgroupUnavailableReason == nil ? nil : memoryMax,
                survivors: daemonized ? survivors : [], obstacle: obstacle), at: now), to: name)
            if daemonized {
                slots[name]!.strays = Set(survivors)
                slots[name]!.straySession = leader
            }
        case .failure(let error):
            apply(slots[name]!.policy.handle(.spawnFailed(error.message), at: now), to: name)
        }
        persist(name)
        resumeStopWaitersIfDone()
    }

    /// A child re-parented to this process (subreaper) ended: if it was the last process a
    /// daemonized agent left running, the agent may start again.
    private func adoptedChildReaped(_ pid: Int32) {
        for name in slots.keys.sorted() where !slots[name]!.strays.isEmpty {
            // A stray that ended may have left children of its own, re-parented here: they are the agent's too.
            let found = slots[name]!.straySession.map { leftovers(of: name, session: $0) } ?? []
            slots[name]!.strays = slots[name]!.strays.filter(ProcessTable.isAlive).union(found)
            guard slots[name]!.strays.isEmpty else { continue }
            slots[name]!.killEscalation?.cancel()
            logger.notice("The processes agent \(name) left in the background have exited.", metadata: ["agent": "\(name)"])
            apply(slots[name]!.policy.handle(.backgroundProcessesExited, at: Moment.now()), to: name)
            persist(name)
        }
        resumeStopWaitersIfDone()
    }

    /// What a run of agent `name` whose leader (session) was `session` left running: its
    /// session, what left the session with the agent's mark, and their descendants; also
    /// adopted processes that cleared their environment when no other agent can have left them.
    private func leftovers(of name: String, session: Int32) -> [Int32] {
        ProcessTable.survivors(
            ofSession: session, environment: LaunchRequest.storeVariable, value: slots[name]!.store.root,
            isStartedHere: ChildReaper.shared.isKnown, unmarkedAdopted: aloneWithProcesses(name))
    }

    /// Whether no agent but `name` has processes running: then an adopted process without
    /// any mark can only be `name`'s. (With several, it is stopped when backstopd stops.)
    private func aloneWithProcesses(_ name: String) -> Bool {
        slots.allSatisfy { $0.key == name || ($0.value.pid == nil && $0.value.strays.isEmpty) }
    }

    /// Runs a ready or health check of the current run, off the actor.
    /// A unit's probe waits until the unit has a main process or is active (while its
    /// `ExecStartPre=` or a forking unit's start process runs, there is nothing to check yet).
    func runProbe(_ name: String, _ probe: Probe, timeoutSeconds: Double) {
        let slot = slots[name]!
        guard let version = slot.policy.runningVersion else { return }
        if let unit = slot.unit, slot.pid == nil, unit.lastState?.activeState != "active" {
            slots[name]!.unit!.heldProbes[probe] = timeoutSeconds
            return
        }
        let generation = slot.generation
        var request = LaunchRequest.make(
            agent: name, exec: probe == .ready ? slot.configuration.readyCheckExec : slot.configuration.healthCheckExec,
            environment: slot.configuration.environment, store: slot.store.root, contentPath: slot.store.path(of: version), version: version, notifySocket: nil,
            watchdogSeconds: 0)
        request.identifier = probe.journalIdentifier(agent: name)
        request.discardsStandardOutput = true
        request.environment[LaunchRequest.storeVariable] = nil
        request.environment[LaunchRequest.probeStoreVariable] = slot.store.root
        if let pid = slot.pid { request.environment["BACKSTOP_AGENT_PID"] = String(pid) }
        Task {
            let result = await DirectRunner.probe(request, timeoutSeconds: timeoutSeconds) { pid in
                await self.probeStarted(name, generation: generation, probe, pid: pid)
            }
            self.probeFinished(name, generation: generation, probe, result: result)
        }
    }

    private func probeStarted(_ name: String, generation: Int, _ probe: Probe, pid: Int32) {
        guard slots[name]?.generation == generation, isRunOn(name) else {
            // The run it checks is already over.
            DirectRunner.signalGroup(pid, SIGKILL)
            return
        }
        slots[name]!.probePIDs[probe] = pid
    }

    private func probeFinished(_ name: String, generation: Int, _ probe: Probe, result: ProbeResult) {
        // A probe of a run that is over was killed with it; its result means nothing.
        guard slots[name]?.generation == generation, isRunOn(name), !shuttingDown else { return }
        slots[name]!.probePIDs[probe] = nil
        let metadata: Logger.Metadata = ["agent": "\(name)", "probe": "\(probe.rawValue)"]
        switch result {
        case .passed:
            break
        case .failed(let detail):
            let message = "The \(probe.rawValue) check of agent \(name) failed: \(detail)."
            // A ready check fails until the agent is up: said once per start, then only in debug output.
            if probe == .ready, slots[name]!.readyCheckFailureSaid {
                logger.debug("\(message)", metadata: metadata)
            } else {
                logger.notice("\(message)\(probe == .ready ? " Retrying until the agent is ready or start_timeout_sec runs out." : "")", metadata: metadata)
                if probe == .ready { slots[name]!.readyCheckFailureSaid = true }
            }
        case .couldNotRun(let detail):
            let consequence = probe == .ready
                ? "readiness cannot be judged, so the agent is stopped (a configuration error, not the content's); fix ready_check_exec"
                : "this check is not counted until health_check_exec is fixed"
            logger.error("The \(probe.rawValue) check of agent \(name) cannot run: \(detail); \(consequence).", metadata: metadata)
        }
        apply(slots[name]!.policy.handle(.probeFinished(probe, result: result), at: Moment.now()), to: name)
        persist(name)
    }

    /// Whether agent `name`'s current run is on: its process runs, or its unit's run began
    /// and has not ended (a unit may be active without a main process).
    private func isRunOn(_ name: String) -> Bool {
        slots[name]?.pid != nil || slots[name]?.unit?.runReported == true
    }

    /// Kills the probes of the run that ended; their results are ignored.
    func stopProbes(_ name: String) {
        slots[name]?.probePIDs.values.forEach { DirectRunner.signalGroup($0, SIGKILL) }
        slots[name]?.probePIDs = [:]
    }

    /// A datagram on the socket of run `generation`: only that run's sandbox reaches it, so it
    /// speaks for the run whether or not its sender is still running (see ``NotifySocket``).
    private func notified(_ name: String, generation: Int, _ message: NotifyMessage) {
        guard slots[name]?.generation == generation else { return }
        guard slots[name]!.pid != nil else {
            // A fast agent's READY=1 can come before its start is recorded: kept for then.
            if slots[name]!.policy.phase.isStarting { slots[name]!.notifiedEarly.append(message) }
            return
        }
        let now = Moment.now()
        if let text = message.value("STATUS") { slots[name]!.statusText = text }
        if message.value("READY") == "1" { apply(slots[name]!.policy.handle(.agentReady, at: now), to: name) }
        if message.value("WATCHDOG") == "1" { apply(slots[name]!.policy.handle(.heartbeat, at: now), to: name) }
        persist(name)
    }

    private func timerFired(_ name: String, _ timer: PolicyTimer, deadline: Double) {
        guard slots[name] != nil, !shuttingDown else { return }
        slots[name]!.timers[timer] = nil
        apply(slots[name]!.policy.handle(.timerFired(timer, deadline: deadline), at: Moment.now()), to: name)
        persist(name)
    }

    // MARK: - Carrying out actions

    func apply(_ actions: [PolicyAction], to name: String) {
        // The policy has already decided: its state is on disk before any of it is carried out
        // or reported, so a daemon killed in between never runs a version it said it quarantined.
        if !actions.isEmpty { persist(name) }
        for action in actions {
            switch action {
            case .spawn(let version, let mode):
                if slots[name]!.contentSwitchError != nil {
                    // Tried again at each start, so that a fixed mount or directory heals it.
                    do {
                        try slots[name]!.store.point(at: version, contentLink: slots[name]!.configuration.contentLink)
                        slots[name]!.contentSwitchError = nil
                    } catch {
                        // Started now, it would run on missing or old content, and that content would be blamed.
                        apply(slots[name]!.policy.handle(.spawnFailed("its content cannot be put in place: \(error)"), at: Moment.now()), to: name)
                        return
                    }
                }
                if slots[name]!.policy.ledger.candidate == version { synchronizeJournal(before: "agent \(name) starts on candidate content \(version)") }
                if slots[name]!.configuration.watchedUnit != nil { startUnit(name, version: version, mode: mode) } else { spawn(name, version: version, mode: mode) }
            case .terminate(let signal):
                if slots[name]!.unit != nil { stopUnit(name, signal: signal) } else { terminate(name, signal: signal) }
            case .switchContent(let version):
                let slot = slots[name]!
                if let version, let record = slot.policy.ledger.record(version) {
                    do { try slot.store.verify(record) } catch {
                        // The rest of this batch was about running the damaged version.
                        apply(slots[name]!.policy.handle(.activeContentCorrupt("\(error)"), at: Moment.now()), to: name)
                        return
                    }
                }
                do {
                    try slot.store.point(at: version, contentLink: slot.configuration.contentLink)
                    slots[name]!.contentSwitchError = nil
                } catch {
                    slots[name]!.contentSwitchError = "\(error)"
                    logger.error("Cannot switch the active link.", metadata: ["agent": "\(name)", "error": "\(error)"])
                }
            case .arm(let timer, let deadline):
                arm(name, timer, deadline: deadline)
            case .disarm(let timer):
                slots[name]!.timers.removeValue(forKey: timer)?.cancel()
            case .record(let decision):
                record(decision)
                if decision.event == .agentStarted, let version = decision.version, slots[name]!.policy.ledger.candidate == version {
                    synchronizeJournal(before: "agent \(name) runs candidate content \(version)")
                }
            case .collectGarbage:
                Task { await self.collectGarbage(name) }
            case .markStartedThisBoot:
                if bootLog.markStarted(name, in: bootID) { saveBootLog() }
            case .startBootHealthClock:
                startBootHealthTimer(name)
            case .probe(let probe, let timeoutSeconds):
                runProbe(name, probe, timeoutSeconds: timeoutSeconds)
            }
        }
    }

    /// Makes the decisions recorded so far durable before something that may crash the
    /// machine (content on probation, a preflight): journald writes to disk only every few
    /// minutes, and a kernel panic before that would leave `history` without them.
    /// `moment` says what comes next, for the warning when journald cannot be reached.
    private func synchronizeJournal(before moment: String) {
        do { try Journal.synchronize() } catch {
            logger.warning("Cannot have journald write its journal to disk before \(moment); a crash now may lose the decisions before it.",
                           metadata: ["error": "\(error)"])
        }
    }

    private func spawn(_ name: String, version: String, mode: RunMode) {
        slots[name]!.generation += 1
        slots[name]!.notifiedEarly = []
        let generation = slots[name]!.generation
        // A socket of the run's own: what an earlier run sent stays on the earlier socket.
        slots[name]!.notifySocket?.invalidate()
        slots[name]!.notifyPump?.cancel()
        (slots[name]!.notifySocket, slots[name]!.notifyPump) = openNotifySocket(for: name, generation: generation)
        let slot = slots[name]!
        var request = LaunchRequest.make(
            agent: name, exec: mode == .safeMode ? slot.configuration.safeModeExec : slot.configuration.exec,
            environment: slot.configuration.environment, store: slot.store.root,
            contentPath: slot.store.path(of: version), version: version, notifySocket: slot.notifySocket?.path,
            watchdogSeconds: slot.configuration.watchdogSeconds)
        slots[name]!.startedAtKernelMicroseconds = KernelLog.monotonicMicroseconds()
        slots[name]!.inScope = false
        slots[name]!.sliceOOMKillsAtStart = nil
        slots[name]!.readyCheckFailureSaid = false
        var sandbox: BubblewrapSandbox
        do throws(SandboxError) {
            sandbox = try BubblewrapSandbox(agent: slot.configuration, daemon: configuration.daemon, contentPath: slot.store.path(of: version))
        } catch {
            Task { self.processEnded(name, generation: generation, result: .failure(LaunchError(message: "sandbox: \(error)"))) }
            return
        }
        if let path = slot.notifySocket?.path {
            // The agent's user must be able to send to its notify socket.
            chown(path, sandbox.account.uid, sandbox.account.gid)
            sandbox.notifySocket = path
        }
        request.sandbox = sandbox
        Task {
            let errorTail = OutputTail()
            let result = await DirectRunner.run(request, errorTail: errorTail) { pid in
                await self.processStarted(name, generation: generation, pid: pid)
            }
            self.processEnded(name, generation: generation, result: result, obstacle: SandboxObstacle.find(in: errorTail.text))
        }
    }

    /// Under systemd, moves a sandboxed agent into a transient scope of its own,
    /// `backstop-<agent>-<pid>.scope` in backstopd's own slice, whose cgroup carries its `memory_max`, `tasks_max`
    /// and `cpu_quota` (Manager.StartTransientUnit with `PIDs=`); what it forks from now on
    /// is counted there too. Without systemd the sandbox's rlimits are its limits; when the
    /// scope cannot be made, its `memory_max` does not hold (the sandbox left it to the scope).
    /// - Returns: whether the process is in its scope.
    func confineInScope(_ name: String, pid: Int32) -> Bool {
        guard let slot = slots[name], let bus = systemd else { return false }
        let limits = UnitSandbox.cgroupProperties(slot.configuration.sandbox)
        let scope = "backstop-\(name)-\(pid).scope"
        var properties: [(String, BusValue)] = [
            ("Description", .string("Backstop agent \(name), run by backstopd in its sandbox")),
            ("PIDs", .pids([UInt32(pid)])),
            ("CollectMode", .string("inactive-or-failed")),
        ]
        // In backstopd's own slice, whose memory.events still counts the scope's OOM kills once it is gone.
        if let slice = Cgroup.ownSlice { properties.append(("Slice", .string(slice.unit))) }
        do {
            _ = try bus.startTransientUnit(scope, properties: properties + Self.orderedBeforeDaemon + limits)
            return true
        } catch {
            let memory = slot.configuration.sandbox.memoryMaxBytes.map { "; memory_max \(SandboxSpec.formatBytes($0)) does not hold for this run" } ?? ""
            logger.warning("Cannot put the agent into a transient scope; its limits are the sandbox's rlimits only\(memory).",
                           metadata: ["agent": "\(name)", "scope": "\(scope)", "error": "\(error)"])
            return false
        }
    }

    /// Signals the agent's session and what a daemonized agent left running; SIGKILL after the grace.
    private func terminate(_ name: String, signal: Int32) {
        guard let slot = slots[name], slot.pid != nil || !slot.strays.isEmpty else { return }
        Self.signalRun(slot, signal)
        let generation = slots[name]!.generation
        slots[name]!.killEscalation?.cancel()
        slots[name]!.killEscalation = Task {
            try? await Task.sleep(for: .seconds(Self.terminationGraceSeconds))
            guard !Task.isCancelled else { return }
            self.escalateKill(name, generation: generation)
        }
    }

    private func escalateKill(_ name: String, generation: Int) {
        guard let slot = slots[name], slot.generation == generation else { return }
        let pids = (slot.pid.map { [$0] } ?? []) + slot.strays.sorted()
        guard !pids.isEmpty else { return }
        logger.warning("Agent \(name) (pid \(pids.map(String.init).joined(separator: ", "))) did not exit within the grace period; sending SIGKILL.",
                       metadata: ["agent": "\(name)", "pid": "\(pids[0])"])
        Self.signalRun(slot, SIGKILL)
    }

    /// Sends `signal` to the agent's session and to what a daemonized run left in the background.
    private static func signalRun(_ slot: AgentSlot, _ signal: Int32) {
        if let pid = slot.pid { DirectRunner.signalGroup(pid, signal) }
        slot.strays.forEach { _ = kill($0, signal) }
    }

    private func arm(_ name: String, _ timer: PolicyTimer, deadline: Double) {
        slots[name]!.timers[timer]?.cancel()
        let delay = max(0, deadline - Moment.now().monotonicSeconds)
        slots[name]!.timers[timer] = Task {
            try? await Task.sleep(for: .seconds(delay))
            guard !Task.isCancelled else { return }
            self.timerFired(name, timer, deadline: deadline)
        }
    }

    func cancelTimers(_ name: String) {
        slots[name]?.timers.values.forEach { $0.cancel() }
        slots[name]?.timers = [:]
        slots[name]?.bootHealthTimer?.cancel()
    }

    /// One journal entry per decision, with its own fields and MESSAGE_ID (not a log line).
    private func record(_ decision: Decision) {
        var context = [("event", decision.event.rawValue), ("agent", decision.agent)]
        if let version = decision.version { context.append(("version", version)) }
        if let reason = decision.reason { context.append(("reason", reason)) }
        LogOutput.emit(
            fields: decision.journalFields,
            line: LogOutput.line(level: decision.priority.logLevel.rawValue, context: context, message: decision.message))
    }

    // MARK: - Boot verdict

    /// A boot is good once every agent with content has been ready for its `boot_good_after_sec`.
    private func startBootHealthTimer(_ name: String) {
        guard !bootGood, let slot = slots[name] else { return }
        let generation = slot.generation
        slots[name]!.bootHealthTimer?.cancel()
        slots[name]!.bootHealthTimer = Task {
            try? await Task.sleep(for: .seconds(slot.configuration.bootGoodAfterSeconds))
            guard !Task.isCancelled else { return }
            self.bootHealthReached(name, generation: generation)
        }
    }

    private func bootHealthReached(_ name: String, generation: Int) {
        guard slots[name]?.generation == generation, slots[name]?.policy.phase.isRunning == true else { return }
        slots[name]!.bootHealthy = true
        // An agent with no content yet does not hold the verdict back; a given-up one does.
        if slots.values.allSatisfy({ $0.bootHealthy || ($0.policy.ledger.active == nil && $0.policy.phase != .givenUp) }) {
            bootGood = true
            bootLog.markGood(bootID)
            saveBootLog()
            // One entry per agent that the verdict rests on, so that each carries its version.
            for slot in slots.values.sorted(by: { $0.configuration.name < $1.configuration.name }) where slot.bootHealthy {
                let agent = slot.configuration.name
                let version = slot.policy.ledger.active ?? "none"
                record(Decision(
                    .bootAssessed, agent: agent, version: slot.policy.ledger.active, bootID: bootID, reason: "good",
                    message: "Boot \(bootID) is good: agent \(agent) stayed healthy for \(slot.configuration.bootGoodAfterSeconds) s on content \(version)."))
            }
        }
    }

    // MARK: - State

    func restore(_ agent: AgentConfiguration, at now: Moment) -> AgentSlot {
        let store = ContentStore(stateDirectory: configuration.daemon.stateDirectory, agent: agent.name)
        var policy = AgentPolicy(settings: agent.policySettings)
        let path = store.stateFile
        do { try store.prepare() } catch {
            if case .layoutRefused = error {
                // Nothing in it is read, written or removed: its state file, versions and
                // staging leftovers may be anywhere the symlink leads.
                logger.critical("The agent's content store is refused, so the agent is not started: \(error)",
                                metadata: ["agent": "\(agent.name)", "error": "\(error)"])
                killLeftovers(of: agent.name, store: store)
                policy.storeRefusal = error.description
                var slot = AgentSlot(configuration: agent, store: store, policy: policy)
                slot.storeRefusal = error
                return slot
            }
            logger.error("Cannot create the content store.", metadata: ["agent": "\(agent.name)", "error": "\(error)"])
        }
        var state = loadState(path: path, store: store)
        var quarantineMarks: Set<String> = []
        // The versions whose marks cannot be read: quarantined all the same (once recovery has
        // adopted what the state file lost), since a mark says nothing but "quarantined".
        var unreadableMarks: [String] = []
        do {
            let (marks, unreadable) = try store.quarantineMarks()
            quarantineMarks = Set(marks.map(\.id))
            unreadableMarks = unreadable.filter { $0.hasSuffix(".json") }.map { String($0.dropLast(".json".count)) }.filter(ContentStore.isValidVersionID)
            if !unreadable.isEmpty {
                logger.critical("Some quarantine marks cannot be read; the versions they name stay quarantined, and their marks are written anew.",
                                metadata: ["agent": "\(agent.name)", "path": "\(store.quarantineDirectory)", "files": "\(unreadable.joined(separator: ","))"])
            }
            let restored = state.ledger.applyQuarantineMarks(marks, hasFiles: { id in var info = stat(); return lstat(store.path(of: id), &info) == 0 }, at: now.wall)
            if !restored.isEmpty {
                logger.critical("Versions marked quarantined beside the store were not quarantined in the state file; they are quarantined again.",
                                metadata: ["agent": "\(agent.name)", "versions": "\(restored.joined(separator: ","))"])
            }
        } catch {
            logger.error("Cannot read the quarantine marks.", metadata: ["agent": "\(agent.name)", "error": "\(error)"])
        }
        let problems = state.ledger.repair(isValidID: ContentStore.isValidVersionID)
        if !problems.isEmpty {
            logger.critical("The agent's state file was inconsistent and has been repaired.",
                            metadata: ["agent": "\(agent.name)", "problems": "\(problems.joined(separator: "; "))"])
        }
        let migration = store.migrateDigests(&state.ledger)
        if !migration.migrated.isEmpty {
            logger.notice("Recorded the digests of versions in the current tree digest format, after checking them in the old one; ids and standings are unchanged.",
                          metadata: ["agent": "\(agent.name)", "versions": "\(migration.migrated.joined(separator: ","))"])
        }
        if !migration.mismatched.isEmpty {
            logger.error("Versions do not match the digest they were staged with; they are refused when activated.",
                         metadata: ["agent": "\(agent.name)", "versions": "\(migration.mismatched.joined(separator: ","))"])
        }
        killLeftovers(of: agent.name, store: store)
        do {
            let recovery = try store.recover(ledger: &state.ledger, contentLink: agent.contentLink, at: now.wall)
            if !recovery.adoptedVersions.isEmpty {
                logger.notice("Adopted complete versions that the state file did not record, as staged.",
                              metadata: ["agent": "\(agent.name)", "versions": "\(recovery.adoptedVersions.joined(separator: ","))"])
            }
            if !recovery.missingVersions.isEmpty {
                logger.warning("Versions the state file recorded have no files any more (an interrupted removal); their records were updated.",
                               metadata: ["agent": "\(agent.name)", "versions": "\(recovery.missingVersions.joined(separator: ","))"])
            }
            // Deleting is not on the way to a running agent.
            Task.detached(priority: .background) { try? store.removeFromStaging(recovery.garbage) }
        } catch {
            logger.error("Cannot restore the active link.", metadata: ["agent": "\(agent.name)", "error": "\(error)"])
        }
        for id in unreadableMarks where state.ledger.record(id).map({ $0.standing != .quarantined }) == true {
            state.ledger.quarantine(id, reason: "quarantine mark unreadable", at: now.wall)
            if state.ledger.active == id { state.ledger.deactivate() }
        }
        policy.restore(from: state, currentBootID: bootID)
        var slot = AgentSlot(configuration: agent, store: store, policy: policy)
        slot.restartDue = state.bootID == bootID ? state.restartDueMonotonicSeconds : nil
        slot.quarantineMarks = quarantineMarks
        slots[agent.name] = slot
        if let active = policy.ledger.active {
            // Verified like every switch: a damaged active version is quarantined before the agent starts.
            apply([.switchContent(version: active)], to: agent.name)
        }
        return slots[agent.name]!
    }

    /// Kills every process a previous backstopd left running, found by the `BACKSTOP_STORE`
    /// mark in its environment: a daemon killed at any instant, even between spawning
    /// the agent and recording it, leaves none behind.
    func killLeftovers(of name: String, store: ContentStore) {
        let ownSession = getsid(0)
        let agentRecorded = RunRecord(runtimeDirectory: configuration.daemon.runtimeDirectory, agent: name).survivor()
        let preflightRecorded = RunRecord(runtimeDirectory: configuration.daemon.runtimeDirectory, agent: name, kind: Preflight.runKind).survivor()
        let recorded = [agentRecorded, preflightRecorded].compactMap { $0 }
        let marked = recorded + ProcessTable.processes(
            withAnyOf: [LaunchRequest.storeVariable, LaunchRequest.preflightStoreVariable], value: store.root
        ).filter { !recorded.contains($0) }
        ContentStore.removeTree(configuration.daemon.preflightDirectory(agent: name))
        for pid in marked {
            let isPreflight = pid == preflightRecorded
                || ProcessTable.hasEnvironment(pid, name: LaunchRequest.preflightStoreVariable, value: store.root)
            logger.warning("Killing \(isPreflight ? "a preflight instance of agent" : "agent") \(name) (pid \(pid)), left running by a previous backstopd.",
                           metadata: ["agent": "\(name)", "pid": "\(pid)"])
            let session = getsid(pid)
            if session > 1 && session != ownSession { kill(-session, SIGKILL) }
            kill(pid, SIGKILL)
        }
    }

    /// The agent's state: the state file, else its previous generation. A file that cannot
    /// be read is moved aside, never overwritten. When both are lost, the versions on disk
    /// are adopted again so that nothing in the store is lost; the active one re-enters
    /// probation, since the standings were in the lost files.
    private func loadState(path: String, store: ContentStore) -> AgentStateFile {
        var errors: [String] = []
        for candidate in [path, AgentStateFile.previousPath(path)] {
            do {
                guard let state = try AgentStateFile.load(path: candidate) else { continue }
                if !errors.isEmpty {
                    logger.critical("The agent's state file is unreadable; using its previous generation.",
                                    metadata: ["path": "\(path)", "error": "\(errors.joined(separator: "; "))"])
                }
                return state
            } catch {
                errors.append(error.description)
                let aside = candidate + ".corrupt-" + String(Int(Date().timeIntervalSince1970))
                _ = rename(candidate, aside)
            }
        }
        let versionsOnDisk = !((try? FileManager.default.contentsOfDirectory(atPath: store.versionsDirectory)) ?? []).isEmpty
        guard !errors.isEmpty || versionsOnDisk else { return AgentStateFile() }
        logger.critical("The agent's state file is lost or unreadable (both generations); the versions on disk were adopted again.",
                        metadata: ["path": "\(path)", "error": "\(errors.isEmpty ? "missing" : errors.joined(separator: "; "))"])
        var state = AgentStateFile()
        state.ledger = store.adoptVersions(activeID: store.activeTarget(), at: Date())
        return state
    }

    func persist(_ name: String) {
        guard let slot = slots[name] else { return }
        // What ran at the end of a boot decides its verdict (a candidate in probation at a crash counts).
        if bootLog.record(name, Self.bootRecord(of: slot.policy), in: bootID) { saveBootLog() }
        guard slot.storeRefusal == nil else { return }
        let state = slot.policy.stateFile(bootID: bootID, at: Moment.now())
        guard state != slot.savedState else { return }
        // Every quarantine a state file records is marked beside the versions first, and a
        // mark goes only once a state file records the release: at no instant is a
        // quarantine only in the state file.
        do { slots[name]!.quarantineMarks = try slot.store.addQuarantineMarks(for: state.ledger, marked: slot.quarantineMarks) } catch {
            logger.error("Cannot write the quarantine marks.", metadata: ["agent": "\(name)", "error": "\(error)"])
        }
        do {
            try state.save(path: slot.store.stateFile)
            slots[name]!.savedState = state
        } catch {
            logger.error("Cannot write the agent's state file.", metadata: ["agent": "\(name)", "error": "\(error)"])
            return
        }
        do { slots[name]!.quarantineMarks = try slot.store.removeQuarantineMarks(notIn: state.ledger, marked: slots[name]!.quarantineMarks) } catch {
            logger.error("Cannot remove the quarantine marks of released versions; they are quarantined again at the next start.",
                         metadata: ["agent": "\(name)", "error": "\(error)"])
        }
    }

    /// A notify socket for run `generation` of the agent, and the task that feeds its datagrams, in order, to the actor.
    func openNotifySocket(for name: String, generation: Int) -> (NotifySocket?, Task<Void, Never>?) {
        let path = configuration.daemon.notifySocketPath(agent: name)
        let (stream, continuation) = AsyncStream.makeStream(of: NotifyMessage.self, bufferingPolicy: .bufferingNewest(64))
        do {
            let socket = try NotifySocket(path: path, queue: DispatchQueue(label: "backstop.notify.\(name)")) {
                continuation.yield($0)
            }
            let pump = Task {
                for await message in stream { self.notified(name, generation: generation, message) }
            }
            return (socket, pump)
        } catch {
            logger.error("Cannot open the agent's notify socket; READY=1 and WATCHDOG=1 will not be seen.",
                         metadata: ["agent": "\(name)", "path": "\(path)", "error": "\(error)"])
            return (nil, nil)
        }
    }
}
