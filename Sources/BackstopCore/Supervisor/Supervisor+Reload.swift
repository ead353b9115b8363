import Foundation
import Logging

/// Why what runs is not the configuration file as it is: the file does not load.
public struct ConfigurationProblem: Sendable, Equatable {
    /// The file's error: file, line, key and message.
    public var error: ConfigurationError
    /// What runs instead: the last good copy (at start) or the configuration a failed reload kept.
    public var running: StatusReport.ConfigurationSource

    /// The file's `error`, with `running` in its place.
    public init(error: ConfigurationError, running: StatusReport.ConfigurationSource) {
        self.error = error
        self.running = running
    }
}

/// What a reload did, by agent name.
public struct ReloadSummary: Sendable, Equatable {
    /// Agents whose `[[agent]]` table is the same: untouched, their processes kept.
    public var unchanged: [String] = []
    /// Agents whose table changed: stopped and started again with it, on their active content.
    public var restarted: [String] = []
    /// Agents no longer configured: stopped (a unit of their own is handed back to systemd).
    public var removed: [String] = []
    /// Agents new to the file: started.
    public var added: [String] = []
}

/// Why a reload was not applied; nothing changed.
public enum ReloadRefusal: Error, Equatable, CustomStringConvertible {
    /// `[daemon]` changed: the directories hold the sockets and the store in use.
    case daemonDirectoriesChanged
    case shuttingDown

    public var description: String {
        switch self {
        case .daemonDirectoriesChanged:
            return "[daemon] state_directory or runtime_directory changed; that takes a restart of backstopd (systemctl restart backstopd)"
        case .shuttingDown: return "backstopd is shutting down"
        }
    }
}

/// Reloading the configuration (SIGHUP, `systemctl reload backstopd`): only what changed is touched.
extension Supervisor {
    /// The `configuration` object of `status`.
    var configurationStatus: StatusReport.ConfigurationStatus {
        StatusReport.ConfigurationStatus(
            path: configuration.path, running: configurationProblem?.running ?? .file,
            error: configurationProblem.map { "\($0.error)" })
    }

    /// Records that the configuration file does not load (nil: it does, and it is what runs).
    public func setConfigurationProblem(_ problem: ConfigurationProblem?) {
        configurationProblem = problem
    }

    /// Records that a reload could not apply the file (`error`): what runs stays, the last
    /// good copy backstopd started on or what loaded before.
    public func fileNotApplied(_ error: ConfigurationError) {
        configurationProblem = ConfigurationProblem(error: error, running: configurationProblem?.running ?? .previous)
    }

    /// Applies `new`: agents whose `[[agent]]` table is unchanged keep running untouched (same
    /// pid); a changed one is stopped and started again with its new table, on its active
    /// content; a removed one is stopped (its store stays on disk; an agent's own unit, with
    /// `runner = "systemd"`, is handed back to systemd, its drop-in removed, still running); a
    /// new one is started. Each agent's change waits for the operator requests already under
    /// way for it (a preflight, say).
    /// - Throws: ``ReloadRefusal`` when `[daemon]` changed or the daemon is stopping; nothing changed then.
    public func reload(to new: Configuration) async throws(ReloadRefusal) -> ReloadSummary {
        guard !shuttingDown else { throw .shuttingDown }
        guard new.daemon == configuration.daemon else { throw .daemonDirectoriesChanged }
        let before = Dictionary(uniqueKeysWithValues: configuration.agents.map { ($0.name, $0) })
        let after = Dictionary(uniqueKeysWithValues: new.agents.map { ($0.name, $0) })
        var summary = ReloadSummary()
        var retired: [String: (state: AgentStateFile, store: ContentStore, generation: Int)] = [:]
        for agent in configuration.agents where after[agent.name] != agent {
            let leaving = after[agent.name] == nil
            try? await inTurn(agent.name) { () async throws(ManagerError) in
                // A refused store was never read: the agent is restored from it afresh, as at a start.
                let refused = slots[agent.name]?.storeRefusal != nil
                let last = await retire(agent.name, leaving: leaving)
                if !refused { retired[agent.name] = last }
            }
            if leaving { summary.removed.append(agent.name) }
        }
        configuration = new
        guard !shuttingDown else { return summary }
        let now = Moment.now()
        for agent in new.agents {
            guard before[agent.name] != agent else {
                summary.unchanged.append(agent.name)
                continue
            }
            var slot: AgentSlot
            if let old = retired[agent.name] {
                summary.restarted.append(agent.name)
                // What the policy knew, under the new settings; the store is left as it is (a
                // staging under way in it goes on), not recovered as at a start.
                var policy = AgentPolicy(settings: agent.policySettings)
                policy.restore(from: old.state, currentBootID: bootID)
                slot = AgentSlot(configuration: agent, store: old.store, policy: policy)
                // Later than any run of the retired slot: a late event of one is never taken for the new run's.
                slot.generation = old.generation + 1
            } else {
                if before[agent.name] == nil { summary.added.append(agent.name) } else { summary.restarted.append(agent.name) }
                slot = restore(agent, at: now)
            }
            slots[agent.name] = slot
            if agent.watchedUnit != nil, !attachUnits([agent]).isEmpty { continue }
            apply(slots[agent.name]!.policy.handle(.begin(restartDueMonotonicSeconds: nil), at: now), to: agent.name)
            persist(agent.name)
        }
        return summary
    }

    /// Stops agent `name` for good and forgets it: its processes are stopped as at a
    /// shutdown (SIGTERM, the grace, SIGKILL) and waited for; a transient unit is stopped and
    /// waited for; an agent's own unit is left running, and when the agent is `leaving` the
    /// configuration it is handed back to systemd (drop-in removed).
    /// - Returns: its policy's state, its store and its last run's generation, for a slot that
    ///   takes its place; nil when it was not configured.
    func retire(_ name: String, leaving: Bool) async -> (state: AgentStateFile, store: ContentStore, generation: Int)? {
        guard let slot = slots[name] else { return nil }
        cancelTimers(name)
        if let unit = slot.unit {
            if slot.configuration.transientUnit != nil {
                slots[name]!.unit!.retiring = true
                do { try unit.bus.stopUnit(unit.name) } catch {
                    logger.error("Cannot stop the agent's transient unit.", metadata: ["agent": "\(name)", "unit": "\(unit.name)", "error": "\(error)"])
                }
                if unit.lastState?.isUp == true { await untilGone(name) }
            } else if leaving {
                if unlink(Self.dropInPath(unit: unit.name)) != 0, errno != ENOENT {
                    logger.error("Cannot remove the unit's drop-in.", metadata: ["unit": "\(unit.name)", "error": "\(String(cString: strerror(errno)))"])
                }
                do { try unit.bus.reload() } catch {
                    logger.error("Cannot make systemd reload its units; the drop-in stays in force until it does.", metadata: ["error": "\(error)"])
                }
                logger.notice("Agent \(name) is no longer supervised; its unit \(unit.name) is systemd's again, with its own Restart=.",
                              metadata: ["agent": "\(name)", "unit": "\(unit.name)"])
            }
            unit.pump.cancel()
            unit.watcher.close()
            stopAwaiting(name)
        } else {
            apply(slots[name]!.policy.handle(.shutdown, at: Moment.now()), to: name)
            if !Self.isStopped(slots[name]!) { await untilGone(name) }
        }
        slots[name]?.notifySocket?.invalidate()
        slots[name]?.notifyPump?.cancel()
        stopProbes(name)
        persist(name)
        let last = slots[name]!
        slots[name] = nil
        return (last.policy.stateFile(bootID: bootID, at: Moment.now()), last.store, last.generation)
    }

    /// Returns once agent `name`'s processes, or its transient unit, are gone (``agentStopWaiters``).
    private func untilGone(_ name: String) async {
        await withCheckedContinuation { agentStopWaiters[name, default: []].append($0) }
    }

    /// Transient units of agents no longer configured (`backstop-<name>.service`, made by an
    /// earlier backstopd whose configuration had them) are stopped: nothing Backstop started
    /// runs unsupervised. Agents' processes left by a killed daemon are killed (their mark).
    func stopUnconfiguredAgents() {
        let configured = Set(configuration.agents.map(\.name))
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: configuration.daemon.stateDirectory)) ?? [])
            .filter { AgentConfiguration.isValidName($0) && !configured.contains($0) }
        for name in names.sorted() {
            let store = ContentStore(stateDirectory: configuration.daemon.stateDirectory, agent: name)
            guard FileManager.default.fileExists(atPath: store.versionsDirectory) else { continue }
            killLeftovers(of: name, store: store)
            guard let bus = systemd, let state = try? bus.unitState("backstop-\(name).service"), state.isUp else { continue }
            logger.warning("Stopping the transient unit of agent \(name), which is no longer configured.",
                           metadata: ["agent": "\(name)", "unit": "backstop-\(name).service"])
            do { try bus.stopUnit("backstop-\(name).service") } catch {
                logger.error("Cannot stop the transient unit.", metadata: ["agent": "\(name)", "error": "\(error)"])
            }
        }
    }
}
