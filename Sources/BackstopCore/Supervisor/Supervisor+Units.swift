import Foundation
import Logging

/// An agent that is a systemd unit (`runner = "systemd"`), as the supervisor tracks it.
struct UnitHost {
    /// `unit`, e.g. `clamav-daemon.service`.
    let name: String
    /// The bus for calls (shared by all units).
    let bus: UnitBus
    /// Watches the unit's state changes; kept for as long as the daemon runs.
    let watcher: UnitWatcher
    /// Feeds the watcher's reports to the actor in the order they came.
    let pump: Task<Void, Never>
    /// Whether the policy was told that the current run started (and not yet that it ended).
    var runReported = false
    /// The state last reported by the watcher.
    var lastState: UnitState?
    /// The object path of Backstop's start job while it is queued or running.
    var startJob: String?
    /// Someone else asked the unit to stop while it ran; a stop or a restart, to be told apart.
    var stopAsked = false
    /// The watcher lost its connection to systemd and has not reported since.
    var disconnected = false
    /// A reload is stopping the unit for good: its reports no longer reach the policy.
    var retiring = false
    /// The unit the agent waits for after systemd stopped it along with it, and its watch.
    var awaited: AwaitedUnit?
    /// The unit's `ConditionTimestampMonotonic` when the last of its jobs ended: a later
    /// one means systemd tried to start it since.
    var conditionCheckedMicroseconds: UInt64?
    /// Probes of the current run, with their timeouts in seconds, that wait for the unit to
    /// have a main process or be active (``Supervisor/runProbe(_:_:timeoutSeconds:)``).
    var heldProbes: [Probe: Double] = [:]
}

/// A unit an agent's unit requires, watched while the agent waits for it to be active again.
struct AwaitedUnit {
    /// E.g. `clamav-daemon.socket`.
    let name: String
    let watcher: UnitWatcher
    let pump: Task<Void, Never>

    /// Stops watching.
    func close() {
        pump.cancel()
        watcher.close()
    }
}

/// The systemd runner: the agent is an existing unit, started, stopped and watched over
/// D-Bus (org.freedesktop.systemd1(5)); its state changes arrive as `PropertiesChanged`
/// signals and drive the same policy as a process Backstop runs itself.
extension Supervisor {
    /// The runtime drop-in that hands restarts of a unit to Backstop (systemd.unit(5)):
    /// its own `Restart=` would restart bad content behind Backstop's back, and its start
    /// limit would refuse the start after a rollback. `ReadOnlyPaths=` (systemd.exec(5))
    /// makes Backstop's state directory, the content store included, read-only to the
    /// unit, even when it runs as root.
    static func unitDropIn(stateDirectory: String) -> String {
        """
        # Written by backstopd at each start: Backstop restarts this unit itself, with
        # backoff, and rolls its content back when it keeps failing. The unit reads its
        # content and never writes it.
        [Unit]
        StartLimitIntervalSec=0

        [Service]
        Restart=no
        ReadOnlyPaths=\(UnitFileSyntax.quoted("-" + stateDirectory))

        """
    }

    /// Connects the agents among `configured` that are units (`runner = "systemd"`, or
    /// `engine = "systemd"`) to them: writes the drop-ins,
    /// reloads systemd, and starts watching each unit.
    /// - Returns: the agents that cannot be supervised (no system bus, unknown unit); they stay stopped.
    func attachUnits(_ configured: [AgentConfiguration]) -> Set<String> {
        let agents = configured.filter { $0.watchedUnit != nil }
        guard !agents.isEmpty else { return [] }
        let bus: UnitBus
        do { bus = try systemd ?? UnitBus() } catch {
            logger.critical("Cannot reach systemd over D-Bus; agents with runner = \"systemd\" or sandbox.engine = \"systemd\" are not supervised.",
                            metadata: ["error": "\(error)"])
            return Set(agents.map(\.name))
        }
        systemd = bus
        for agent in agents where agent.runner == .systemd {
            let path = Self.dropInPath(unit: agent.unit!)
            do {
                try DurableFile.makeDirectories((path as NSString).deletingLastPathComponent, mode: 0o755)
                try DurableFile.write(Data(Self.unitDropIn(stateDirectory: configuration.daemon.stateDirectory).utf8), to: path, mode: [.ownerReadWrite, .groupRead, .otherRead])
            } catch {
                logger.error("Cannot write the unit's drop-in; its own Restart= and start limit stay in force.",
                             metadata: ["agent": "\(agent.name)", "unit": "\(agent.unit!)", "error": "\(error)"])
            }
        }
        do { try bus.reload() } catch {
            logger.error("Cannot make systemd reload its units.", metadata: ["error": "\(error)"])
        }
        var unwatchable: Set<String> = []
        for agent in agents {
            let name = agent.name
            let unitName = agent.watchedUnit!
            do {
                let path = try bus.loadUnit(unitName)
                let (stream, continuation) = AsyncStream.makeStream(of: UnitEvent.self, bufferingPolicy: .bufferingNewest(64))
                let watcher = try UnitWatcher(unit: unitName, path: path) { continuation.yield($0) }
                let pump = Task {
                    for await event in stream {
                        switch event {
                        case .changed(let state): self.unitChanged(name, state)
                        case .jobRemoved(let job, let result, let state): self.unitJobRemoved(name, job: job, result: result, state: state)
                        case .disconnected(let reason): self.unitDisconnected(name, reason: reason)
                        }
                    }
                }
                slots[name]!.unit = UnitHost(name: unitName, bus: bus, watcher: watcher, pump: pump)
            } catch {
                logger.critical("Cannot watch the agent's unit (\(error)); the agent is not supervised.",
                                metadata: ["agent": "\(name)", "unit": "\(unitName)", "error": "\(error)"])
                unwatchable.insert(name)
            }
        }
        return unwatchable
    }

    /// Where the drop-in for `unit` goes: under /run, so it never outlives the boot.
    static func dropInPath(unit: String) -> String { "/run/systemd/system/\(unit).d/50-backstop.conf" }

    /// At a clean stop of backstopd: the drop-ins go, so that while Backstop is away the
    /// units restart as their own `Restart=` says. Not while the machine shuts down (systemd
    /// refuses reloads then, and /run goes with the boot anyway).
    func detachUnits() {
        let units = slots.values.compactMap(\.unit)
        guard !units.isEmpty else { return }
        for unit in units where unlink(Self.dropInPath(unit: unit.name)) != 0 && errno != ENOENT {
            logger.error("Cannot remove the unit's drop-in.", metadata: ["unit": "\(unit.name)", "error": "\(String(cString: strerror(errno)))"])
        }
        guard (try? units[0].bus.systemState()) != "stopping" else { return }
        do { try units[0].bus.reload() } catch {
            logger.error("Cannot make systemd reload its units; the drop-ins stay in force until it does.", metadata: ["error": "\(error)"])
        }
    }

    /// `.spawn` for a unit: clear a failed state and start it (a transient unit: make it, on
    /// `version` in `mode`). The watcher then reports the unit's state, also when it was up
    /// already (started before backstopd, or by an operator).
    func startUnit(_ name: String, version: String, mode: RunMode) {
        guard let unit = slots[name]?.unit else {
            let unit = slots[name]!.configuration.watchedUnit ?? ""
            apply(slots[name]!.policy.handle(.spawnFailed("\(unit) cannot be watched over D-Bus (see the error at backstopd's start)"), at: Moment.now()), to: name)
            return
        }
        slots[name]!.generation += 1
        slots[name]!.unit!.runReported = false
        slots[name]!.unit!.heldProbes = [:]
        stopAwaiting(name)
        do {
            // Best effort: a unit that is not failed, or not loaded at the moment, has nothing to reset.
            try? unit.bus.resetFailedUnit(unit.name)
            if slots[name]!.configuration.transientUnit != nil, unit.lastState?.isUp != true {
                slots[name]!.unit!.startJob = try unit.bus.startTransientUnit(unit.name, properties: transientProperties(name, version: version, mode: mode))
            } else {
                slots[name]!.unit!.startJob = try unit.bus.startUnit(unit.name)
            }
            unit.watcher.refresh()
        } catch {
            apply(slots[name]!.policy.handle(.spawnFailed("\(error)"), at: Moment.now()), to: name)
            persist(name)
        }
    }

    /// The properties of agent `name`'s transient unit running `version` in `mode`: its
    /// command line and environment as a direct run would have them, systemd's timeouts and
    /// watchdog from the agent's settings, and its sandbox (``UnitSandbox/busProperties()``).
    func transientProperties(_ name: String, version: String, mode: RunMode) -> [(String, BusValue)] {
        let slot = slots[name]!
        let agent = slot.configuration
        let request = LaunchRequest.make(
            agent: name, exec: mode == .safeMode ? agent.safeModeExec : agent.exec, environment: agent.environment,
            store: slot.store.root, contentPath: slot.store.path(of: version), version: version, notifySocket: nil, watchdogSeconds: 0)
        // systemd gives the unit PATH, the locale, and NOTIFY_SOCKET and WATCHDOG_* of its own.
        let environment = agent.environment.merging(["BACKSTOP_CONTENT", "BACKSTOP_CONTENT_VERSION"].map { ($0, request.environment[$0]!) }) { $1 }
            .sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        var properties: [(String, BusValue)] = [
            ("Description", .string("Backstop agent \(name) on content \(version)")),
            ("Type", .string(agent.notify ? "notify" : "exec")),
            ("ExecStart", .command(path: request.arguments[0], arguments: request.arguments)),
            ("Environment", .strings(environment)),
            ("SyslogIdentifier", .string(name)),
            ("TimeoutStartUSec", .uint64(UInt64(agent.startTimeoutSeconds) * 1_000_000)),
            ("TimeoutStopUSec", .uint64(UInt64(Self.terminationGraceSeconds * 1_000_000))),
        ]
        if agent.notify, agent.watchdogSeconds > 0 { properties.append(("WatchdogUSec", .uint64(UInt64(agent.watchdogSeconds) * 1_000_000))) }
        return properties + Self.orderedBeforeDaemon + UnitSandbox(
            spec: agent.sandbox, unit: slot.unit!.name, stateDirectory: configuration.daemon.stateDirectory,
            runtimeDirectory: configuration.daemon.runtimeDirectory, isTransient: true
        ).busProperties()
    }

    /// `.terminate` for a unit: SIGABRT (a hang) to its main process, otherwise a stop job.
    func stopUnit(_ name: String, signal: Int32) {
        guard let unit = slots[name]?.unit else { return }
        do {
            if signal == SIGABRT {
                try unit.bus.killMainProcess(unit.name, signal: SIGABRT)
            } else {
                try unit.bus.stopUnit(unit.name)
            }
        } catch {
            logger.error("Cannot stop the agent's unit.", metadata: ["agent": "\(name)", "unit": "\(unit.name)", "error": "\(error)"])
        }
    }

    /// The end of a job for an agent's unit, and the unit's state as it left it.
    ///
    /// Backstop's start job: when the unit is not up and never was, systemd refused the
    /// start (a `Condition…=` not met, a unit it requires that failed, a start limit). That
    /// is a configuration matter, as when a program cannot be executed; a start that another
    /// job replaced (`systemctl stop` while it started) is an operator's stop.
    ///
    /// Someone else's job after they asked the unit to stop: a unit that is still down
    /// was stopped (`systemctl stop`, or the system shutting down), not restarted.
    func unitJobRemoved(_ name: String, job: String, result: String, state: UnitState) {
        guard let unit = slots[name]?.unit, !shuttingDown, !unit.retiring else { return }
        let now = Moment.now()
        defer { persist(name) }
        // A start that systemd skipped (a condition not met) ends "done" with the unit down, as
        // a stop job for a unit that is down does; only the start checked the conditions.
        let conditionChecked = try? unit.bus.monotonicMicroseconds("ConditionTimestampMonotonic", of: unit.name)
        let startTried = if let before = unit.conditionCheckedMicroseconds, let conditionChecked { conditionChecked != before } else { false }
        slots[name]!.unit!.conditionCheckedMicroseconds = conditionChecked
        if unit.stopAsked, !state.isUp {
            slots[name]!.unit!.stopAsked = false
            if job == unit.startJob, result != "done" {
                // Backstop's own start failed (systemd's TimeoutStartSec=, a failing ExecStartPre=):
                // the end of the run, not a stop.
                slots[name]!.unit!.startJob = nil
                runEnded(name, state, at: now)
                return
            }
            if (try? unit.bus.systemState()) == "stopping" {
                // The machine shuts down: systemd stops the agent before backstopd. Not an
                // operator's decision; the agent starts again at the next boot.
                apply(slots[name]!.policy.handle(.shutdown, at: now), to: name)
            } else if let dependency = stoppedDependency(of: unit) {
                runOver(name)
                stoppedWithDependency(name, dependency, termination: state.termination, at: now)
                return
            } else {
                stoppedOutside(name, at: now)
            }
            runEnded(name, state, at: now)
            return
        }
        if job != unit.startJob, [.backoff, .restarting].contains(slots[name]!.policy.phase), !state.isUp, result == "done" {
            // Someone else's start that systemd skipped while Backstop waits to restart the
            // unit: its socket triggered by a client (again and again until the socket hits its
            // trigger limit), a unit that wants it. Not a stop; the restart stays Backstop's.
            if startTried {
                logger.notice("A start of the agent's unit that Backstop did not ask for was skipped: a condition of the unit is not met; Backstop restarts it after its backoff.",
                              metadata: ["agent": "\(name)", "unit": "\(unit.name)"])
                return
            }
            // A stop job for a unit that is down while Backstop waits to restart it: carried
            // over from a unit it requires, or `systemctl stop`, the operator's word.
            if let dependency = stoppedDependency(of: unit) {
                stoppedWithDependency(name, dependency, termination: nil, at: now)
            } else {
                stoppedOutside(name, at: now)
            }
            return
        }
        guard job == unit.startJob else { return }
        slots[name]!.unit!.startJob = nil
        guard slots[name]!.policy.phase.isStarting, !unit.runReported, !state.isUp, state.activeState != "failed" else { return }
        let why: String
        switch result {
        case "canceled":
            logger.notice("The start of the agent's unit was canceled outside Backstop; it stays stopped until `backstopctl start \(name)`.",
                          metadata: ["agent": "\(name)", "unit": "\(unit.name)"])
            apply(slots[name]!.policy.handle(.stop, at: now), to: name)
            why = "its start was canceled by another job"
        case "done": why = "systemd skipped it because a condition of the unit is not met (systemctl status \(unit.name))"
        case "dependency": why = "a unit it requires did not start (systemctl list-dependencies \(unit.name))"
        default: why = "its start job ended with result \"\(result)\" (systemctl status \(unit.name))"
        }
        apply(slots[name]!.policy.handle(.spawnFailed("\(unit.name) did not start: \(why)"), at: now), to: name)
    }

    /// The unit among those whose stop systemd carries over to the agent's unit (`Requires=`,
    /// `BindsTo=`, `Requisite=`, `PartOf=`) that is going down (deactivating, or a stop job
    /// queued for it) as the agent's own stop ends, or went down since (or at most
    /// ``relationSlackMicroseconds`` before) the agent's unit began to stop; nil when there is
    /// none. systemd does not say why it queued a unit's stop job, but a stop carried over
    /// from a required unit comes in the same transaction as that unit's stop, and systemd
    /// stops the agent's unit first when it is ordered after it (a socket and its service),
    /// so the required unit is still going down. `systemctl stop` of the agent's unit alone
    /// leaves them as they were (a oneshot it requires may have been down for long).
    private func stoppedDependency(of unit: UnitHost) -> String? {
        let required: [String]
        do { required = try unit.bus.stopPropagatingUnits(of: unit.name) } catch {
            logger.error("Cannot read the units the agent's unit requires; its stop is taken for an operator's.",
                         metadata: ["unit": "\(unit.name)", "error": "\(error)"])
            return nil
        }
        let stopBegan = (try? unit.bus.monotonicMicroseconds("ActiveExitTimestampMonotonic", of: unit.name)) ?? 0
        return required.first { other in
            guard let (activeState, jobType) = try? unit.bus.activeStateAndJob(other) else { return false }
            if activeState == "deactivating" || jobType == "stop" { return true }
            guard activeState == "inactive" || activeState == "failed",
                let down = try? unit.bus.monotonicMicroseconds("InactiveEnterTimestampMonotonic", of: other)
            else { return false }
            return down + Self.relationSlackMicroseconds >= stopBegan
        }
    }

    /// How long before the agent's unit began to stop a unit it requires may have gone down
    /// for the stop to be taken as carried over from it, in µs: jobs of one transaction that
    /// are not ordered against each other run side by side, and the other may finish first.
    static let relationSlackMicroseconds: UInt64 = 1_000_000

    /// systemd stopped agent `name`'s unit with `dependency`, a unit it requires: the agent
    /// waits, not stopped by an operator, and starts again once `dependency` is active (at
    /// once when it failed by itself, such as a socket that hit its trigger limit: the start
    /// of the agent's unit starts it again).
    private func stoppedWithDependency(_ name: String, _ dependency: String, termination: Termination?, at now: Moment) {
        guard let unit = slots[name]?.unit else { return }
        logger.notice("The agent's unit was stopped with \(dependency), which it requires; starting it again once \(dependency) is active.",
                      metadata: ["agent": "\(name)", "unit": "\(unit.name)", "dependency": "\(dependency)"])
        apply(slots[name]!.policy.handle(.stoppedWithDependency(dependency, termination: termination), at: now), to: name)
        guard slots[name]!.policy.phase.isAwaitingDependency else { return }
        stopAwaiting(name)
        do {
            let path = try unit.bus.loadUnit(dependency)
            let (stream, continuation) = AsyncStream.makeStream(of: UnitEvent.self, bufferingPolicy: .bufferingNewest(16))
            let watcher = try UnitWatcher(unit: dependency, path: path) { continuation.yield($0) }
            let pump = Task {
                for await event in stream {
                    if case .changed(let state) = event { self.dependencyChanged(name, dependency, activeState: state.activeState, hasJob: state.job != nil) }
                }
            }
            slots[name]!.unit!.awaited = AwaitedUnit(name: dependency, watcher: watcher, pump: pump)
            // Read after the watch began, so that no change falls between the two.
            let (activeState, jobType) = try unit.bus.activeStateAndJob(dependency)
            dependencyChanged(name, dependency, activeState: activeState, hasJob: jobType != nil)
        } catch {
            logger.error("Cannot watch \(dependency); starting the agent's unit again now.",
                         metadata: ["agent": "\(name)", "dependency": "\(dependency)", "error": "\(error)"])
            apply(slots[name]!.policy.handle(.dependencyActive, at: now), to: name)
        }
    }

    /// A state of the unit agent `name` waits for: once it is active with no job pending, or
    /// failed by itself with none, the agent starts.
    private func dependencyChanged(_ name: String, _ dependency: String, activeState: String, hasJob: Bool) {
        guard slots[name]?.unit?.awaited?.name == dependency, !shuttingDown, !hasJob,
            activeState == "active" || activeState == "failed"
        else { return }
        logger.notice(activeState == "active"
                      ? "\(dependency) is active again; starting the agent's unit."
                      : "\(dependency) failed by itself; starting the agent's unit, which starts it again.",
                      metadata: ["agent": "\(name)", "dependency": "\(dependency)"])
        stopAwaiting(name)
        apply(slots[name]!.policy.handle(.dependencyActive, at: Moment.now()), to: name)
        persist(name)
    }

    /// Ends the watch of the unit agent `name` waited for, if any.
    func stopAwaiting(_ name: String) {
        slots[name]?.unit?.awaited?.close()
        slots[name]?.unit?.awaited = nil
    }

    /// An operator stopped the unit with systemctl: not a failure, and the agent stays
    /// stopped (across restarts of backstopd and reboots) until it is started again.
    private func stoppedOutside(_ name: String, at now: Moment) {
        logger.notice("The agent's unit was stopped outside Backstop; it stays stopped until `backstopctl start \(name)`.",
                      metadata: ["agent": "\(name)", "unit": "\(slots[name]!.configuration.watchedUnit ?? "")"])
        apply(slots[name]!.policy.handle(.stop, at: now), to: name)
    }

    /// The connection to systemd was lost; the watcher reconnects and reports the state afresh.
    func unitDisconnected(_ name: String, reason: String) {
        guard let unit = slots[name]?.unit, !shuttingDown else { return }
        logger.warning("Lost the connection to systemd (\(reason)); watching the agent's unit again as soon as systemd answers.",
                       metadata: ["agent": "\(name)", "unit": "\(unit.name)"])
        slots[name]!.unit!.disconnected = true
    }

    /// A state of an agent's unit, from its watcher, in order.
    func unitChanged(_ name: String, _ state: UnitState) {
        guard let unit = slots[name]?.unit, !shuttingDown else { return }
        guard !unit.retiring else {
            slots[name]!.unit!.lastState = state
            if !state.isUp { agentStopWaiters.removeValue(forKey: name)?.forEach { $0.resume() } }
            return
        }
        let now = Moment.now()
        let phase = slots[name]!.policy.phase
        let previous = unit.lastState
        slots[name]!.unit!.lastState = state
        defer { persist(name) }
        if unit.disconnected {
            slots[name]!.unit!.disconnected = false
            logger.notice("Watching the agent's unit again.", metadata: ["agent": "\(name)", "unit": "\(unit.name)"])
        }
        if state.isUp {
            if unit.stopAsked {
                // Stopped and started again by someone else (`systemctl restart`): the run goes
                // on, with a new main process.
                slots[name]!.unit!.stopAsked = false
                logger.notice("The agent's unit was restarted outside Backstop.", metadata: ["agent": "\(name)", "unit": "\(unit.name)"])
            }
            if !unit.runReported {
                guard phase.isStarting else {
                    // Started outside Backstop (systemctl start): supervised from now on, as after `backstopctl start`.
                    if previous?.isUp != true, [.stopped, .backoff, .restarting, .givenUp].contains(phase) || phase.isAwaitingDependency {
                        logger.notice("The agent's unit was started outside Backstop; supervising it.", metadata: ["agent": "\(name)"])
                        apply(slots[name]!.policy.handle(.start, at: now), to: name)
                    }
                    return
                }
                slots[name]!.unit!.runReported = true
                apply(slots[name]!.policy.handle(.agentStarted(pid: state.mainPID), at: now), to: name)
            }
            if state.mainPID > 0 { slots[name]!.pid = state.mainPID }
            if state.mainPID > 0 || state.activeState == "active" {
                let held = slots[name]!.unit!.heldProbes
                slots[name]!.unit!.heldProbes = [:]
                for (probe, timeoutSeconds) in held { runProbe(name, probe, timeoutSeconds: timeoutSeconds) }
            }
            if state.activeState == "active" { apply(slots[name]!.policy.handle(.agentReady, at: now), to: name) }
        } else if state.activeState == "deactivating" {
            // Stopping for a job that is not Backstop's (Backstop's own stops happen while the
            // policy is stopping): someone's stop or restart job. Which one, the next states tell.
            // While Backstop's own start job runs, a `systemctl restart` is merged into it, and
            // systemd's giving up on the start looks the same until that job ends. Without a
            // job, the main process ended by itself.
            if unit.runReported, let job = state.job, phase.isStarting || phase.isRunning,
                job != unit.startJob || phase.isStarting
            {
                slots[name]!.unit!.stopAsked = true
            }
        } else if state.activeState == "inactive" || state.activeState == "failed" {
            // Down after someone asked it to stop: a stop, unless it comes up again (a
            // restart); the end of their job tells (``unitJobRemoved(_:job:result:state:)``).
            guard !unit.stopAsked else { return }
            // A start that failed before its activation was seen is a run that ended too.
            let failedEarly = !unit.runReported && phase.isStarting && state.activeState == "failed"
                && previous?.activeState != "failed"
            guard unit.runReported || failedEarly else { return }
            if failedEarly { apply(slots[name]!.policy.handle(.agentStarted(pid: state.mainPID), at: now), to: name) }
            runEnded(name, state, at: now)
        }
    }

    /// Forgets agent `name`'s run: its process and probes.
    private func runOver(_ name: String) {
        slots[name]!.unit!.runReported = false
        slots[name]!.unit!.heldProbes = [:]
        slots[name]!.pid = nil
        stopProbes(name)
    }

    /// The end of a unit's run, told to the policy: how its main process ended, and what
    /// systemd's `Result` adds (its start timeout, its watchdog).
    ///
    /// A unit that failed (`Result=exit-code`, `signal`, `core-dump`, `timeout`) ends with the
    /// exit code or signal of the command that failed it first, read from the unit's
    /// properties: an `ExecStartPre=`, the start process of a `Type=forking` unit, an
    /// `ExecStartPost=`, or the main process. A failure like any other, never a clean exit.
    private func runEnded(_ name: String, _ state: UnitState, at now: Moment) {
        runOver(name)
        let phase = slots[name]!.policy.phase
        var state = state
        if ["exit-code", "signal", "core-dump", "timeout"].contains(state.result), let unit = slots[name]!.unit {
            do {
                state.failedCommand = try unit.bus.failedCommand(of: unit.name)
            } catch {
                logger.error("Cannot read which command of the agent's unit failed.",
                             metadata: ["agent": "\(name)", "unit": "\(unit.name)", "error": "\(error)"])
            }
            if let command = state.failedCommand {
                logger.notice("The agent's unit failed in \(command.setting)= (\(command.path)): \(command.termination.description), Result=\(state.result).",
                              metadata: ["agent": "\(name)", "unit": "\(unit.name)"])
            }
        }
        // A unit systemd could not set up never ran the content: exec-failed, as a sandbox that cannot be set up.
        if let failure = state.setUpFailure {
            logger.error("The agent's unit failed before its program ran; a configuration error, not the content's.",
                         metadata: ["agent": "\(name)", "unit": "\(slots[name]!.unit!.name)", "error": "\(failure)"])
        }
        let known: FailureReason? = switch state.result {
        case _ where state.setUpFailure != nil: .execFailed
        case "timeout" where phase.isStarting: .startTimeout
        case "watchdog": .hung
        default: nil
        }
        apply(slots[name]!.policy.handle(.agentExited(
            state.termination ?? .exited(code: 0), oomKill: state.result == "oom-kill" ? .machine : nil, reason: known), at: now), to: name)
    }
}
