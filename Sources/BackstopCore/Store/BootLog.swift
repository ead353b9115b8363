import Foundation

/// What one agent ran in a boot, as last recorded in it.
public struct BootAgentRecord: Codable, Sendable, Equatable {
    /// The active version, nil when none.
    public var active: String?
    /// The candidate in probation, nil when the active version is known-good (or none is active).
    public var candidate: String?
    /// `normal` or `safe-mode`.
    public var mode: RunMode
    /// Whether the agent was started on this content in this boot; nil in records written
    /// before it was kept (taken as started). A boot in which the agent was held stopped is
    /// no evidence against content it never ran.
    public var started: Bool?
    /// The staged version whose preflight instance is running, nil when none: written (and
    /// synced) before the instance starts, so that a boot that ends during it counts against
    /// this version, not against the content the agent runs.
    public var preflight: String?

    /// A record of what an agent runs.
    public init(active: String?, candidate: String?, mode: RunMode, started: Bool? = nil, preflight: String? = nil) {
        self.active = active
        self.candidate = candidate
        self.mode = mode
        self.started = started
        self.preflight = preflight
    }

    /// Whether `other` names the same content in the same mode (started or not).
    public func sameContent(as other: BootAgentRecord) -> Bool {
        active == other.active && candidate == other.candidate && mode == other.mode
    }
}

/// A `boots.json` that cannot be read as a boot log.
public struct BootLogUnreadable: Error, CustomStringConvertible {
    /// The file.
    public var path: String
    /// Why: the decoder's complaint, or why the file cannot be read.
    public var reason: String
    /// For an operator.
    public var description: String { "\(path): \(reason)" }
}

/// One boot as backstopd saw it.
public struct BootRecord: Codable, Sendable, Equatable {
    /// The kernel's boot ID (32 hex digits, sd_id128_get_boot(3)).
    public var id: String
    /// When backstopd first started in this boot.
    public var startedAt: Date
    /// The current boot: `pending` until every agent with content stayed healthy for its
    /// `boot_good_after_sec`, then `good`. A past boot, once the next one assessed it:
    /// `good`, `failed` (neither good nor shut down cleanly, or ended uncleanly with a
    /// candidate in probation) or `stopped` (shut down cleanly before it was judged good).
    public var state: String
    /// The active version of each agent, as last recorded in this boot.
    public var versions: [String: String]
    /// What each agent ran, as last recorded in this boot; nil in records written before it was kept.
    public var agents: [String: BootAgentRecord]?
    /// Whether backstopd stopped cleanly (SIGTERM: a shutdown, or an operator stopping it) in
    /// this boot and did not start again in it.
    public var cleanShutdown: Bool?
    /// Whether this boot reached boot-good (every agent healthy for its `boot_good_after_sec`);
    /// kept after a verdict of `failed`, which a good boot gets when it ended uncleanly with a
    /// candidate in probation. Nil in records written before it was kept.
    public var reachedGood: Bool?

    enum CodingKeys: String, CodingKey {
        case id, state, versions, agents
        case startedAt = "started_at"
        case cleanShutdown = "clean_shutdown"
        case reachedGood = "reached_good"
    }

    /// Whether this boot, judged `failed`, counts against what `agent` ran in it (SPEC.md's
    /// failed boot, applied per agent): a preflight under way at its end is blamed instead
    /// (``failedPreflightBootsInARow(agent:version:before:)``); else a candidate in probation is,
    /// good boot or not; else the known-good content is, but only when the boot never reached
    /// boot-good and no other agent had content on trial in it (``otherAgentOnTrial(than:)``).
    /// A boot in which the agent was not started is no evidence against its content.
    func countsAgainstContent(of agent: String) -> Bool {
        guard state == "failed", let record = agents?[agent], record.started != false, record.preflight == nil else { return false }
        return record.candidate != nil || (reachedGood != true && otherAgentOnTrial(than: agent) == nil)
    }

    /// Another agent that ran a candidate or a preflight in this boot: a failed boot counts
    /// against that content, not against the known-good content of `agent`.
    func otherAgentOnTrial(than agent: String) -> String? {
        agents?.sorted { $0.key < $1.key }.first { name, record in
            name != agent && ((record.started != false && record.candidate != nil) || record.preflight != nil)
        }?.key
    }

    /// A record of boot `id`; `state` is `pending` or `good`.
    public init(id: String, startedAt: Date, state: String, agents: [String: BootAgentRecord]) {
        self.id = id
        self.startedAt = startedAt
        self.state = state
        self.agents = agents
        self.versions = agents.compactMapValues(\.active)
    }
}

/// The verdict on a boot that is over, made at the first start of backstopd in the next boot.
public struct BootVerdict: Sendable, Equatable {
    /// The boot judged.
    public var record: BootRecord
    /// `good`, `failed` or `stopped` (see ``BootRecord/state``).
    public var state: String
    /// Why, in a few words: "it was judged good", "it shut down cleanly", ...
    public var explanation: String
}

/// The recent boots, oldest first: `<state_directory>/boots.json`, written crash-safely.
///
/// Boot assessment (SPEC.md's failed boot and boot loop) works on this log: at the first start
/// in a new boot, the previous boot is judged (``enter(_:)``), and the failed boots in a row
/// with the same content decide a boot loop (``failedBootsInARow(agent:running:before:)``).
public struct BootLog: Codable, Sendable, Equatable {
    /// How many boots are kept; older ones are dropped, so the file stays small.
    public static let capacity = 100

    /// The boots, oldest first, at most ``capacity``.
    public var boots: [BootRecord] = []

    public init() {}

    /// The file below `stateDirectory`.
    public static func path(stateDirectory: String) -> String { stateDirectory + "/boots.json" }

    /// Reads the log; a missing file is an empty log.
    /// - Throws: ``BootLogUnreadable`` when the file is there but cannot be read (permissions)
    ///   or is not a boot log (corrupt, truncated, empty).
    public static func load(stateDirectory: String) throws(BootLogUnreadable) -> BootLog {
        let path = path(stateDirectory: stateDirectory)
        do {
            guard try DurableFile.exists(path) else { return BootLog() }
        } catch {
            throw BootLogUnreadable(path: path, reason: "cannot read it: \(error)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw BootLogUnreadable(path: path, reason: "cannot read it: \(String(cString: strerror(access(path, R_OK) == 0 ? EIO : errno)))")
        }
        return try decode(data, path: path)
    }

    /// Decodes the contents of a boot log.
    /// - Parameter path: named in the error.
    /// - Throws: ``BootLogUnreadable`` when `data` is not a boot log.
    public static func decode(_ data: Data, path: String) throws(BootLogUnreadable) -> BootLog {
        do { return try JSONDecoder.backstop.decode(BootLog.self, from: data) } catch {
            throw BootLogUnreadable(path: path, reason: "not a boot log: \(error)")
        }
    }

    /// Moves an unreadable log aside to `boots.json.corrupt-<seconds since 1970>`, so that
    /// nothing is lost and the next write starts a new log.
    /// - Returns: the new path, nil when it could not be moved.
    public static func setAside(stateDirectory: String) -> String? {
        let path = path(stateDirectory: stateDirectory)
        let aside = path + ".corrupt-" + String(Int(Date().timeIntervalSince1970))
        return rename(path, aside) == 0 ? aside : nil
    }

    /// Writes the log crash-safely.
    /// - Throws: `Errno` from the file system.
    public func save(stateDirectory: String) throws {
        try DurableFile.write(try JSONEncoder.backstop.encode(self), to: Self.path(stateDirectory: stateDirectory))
    }

    /// Starts recording the current boot. At the first start in a boot, the boot before it is
    /// judged and its verdict returned; at a later start in the same boot (a daemon restart)
    /// the boot goes on and is no longer marked as cleanly shut down.
    public mutating func enter(_ record: BootRecord) -> BootVerdict? {
        if let index = boots.firstIndex(where: { $0.id == record.id }) {
            boots[index].cleanShutdown = nil
            // A preflight instance does not outlive the daemon that ran it.
            for agent in boots[index].agents?.keys.sorted() ?? [] { boots[index].agents![agent]!.preflight = nil }
            return nil
        }
        let verdict = boots.indices.last.map { judge(at: $0) }
        boots.append(record)
        if boots.count > Self.capacity { boots.removeFirst(boots.count - Self.capacity) }
        return verdict
    }

    /// Judges the boot at `index`, which is over, and records the verdict in its state. It
    /// failed when it ended without a clean shutdown and either never reached boot-good, or
    /// reached it while a candidate was in probation or a preflight was running: content
    /// still on trial is blamed for a crash of the machine at any time of the boot.
    private mutating func judge(at index: Int) -> BootVerdict {
        let boot = boots[index]
        let agents = (boot.agents ?? [:]).sorted { $0.key < $1.key }
        let preflights = agents.compactMap { name, agent in agent.preflight.map { "\(name) \($0)" } }
        let candidates = agents.filter { $0.value.started != false && $0.value.preflight == nil }
            .compactMap { name, agent in agent.candidate.map { "\(name) \($0)" } }
        let onTrial = (preflights.isEmpty ? [] : ["during a preflight of \(preflights.joined(separator: ", "))"])
            + (candidates.isEmpty ? [] : ["while a candidate was in probation (\(candidates.joined(separator: ", ")))"])
        let state: String
        let explanation: String
        if boot.cleanShutdown == true {
            state = boot.state == "good" ? "good" : "stopped"
            explanation = "backstopd was stopped cleanly in it"
        } else if boot.state == "good" && onTrial.isEmpty {
            state = "good"
            explanation = "every agent stayed healthy for its boot_good_after_sec"
        } else if boot.state == "good" {
            state = "failed"
            explanation = "it reached boot-good but ended without a clean shutdown \(onTrial.joined(separator: " and "))"
        } else {
            state = "failed"
            explanation = "it was never judged good and did not shut down cleanly" + (onTrial.isEmpty ? "" : ", \(onTrial.joined(separator: " and "))")
        }
        boots[index].state = state
        return BootVerdict(record: boots[index], state: state, explanation: explanation)
    }

    /// Records what `agent` runs in boot `id` (a new activation, a rollback, a promotion);
    /// whether it was started is kept while it runs the same version in the same mode (a
    /// promotion does not restart it), and a preflight mark is kept as it is.
    /// - Returns: whether anything changed (and the log needs saving).
    public mutating func record(_ agent: String, _ running: BootAgentRecord, in id: String) -> Bool {
        guard let index = boots.firstIndex(where: { $0.id == id }) else { return false }
        var running = running
        if let previous = boots[index].agents?[agent] {
            if previous.active == running.active && previous.mode == running.mode { running.started = previous.started }
            running.preflight = previous.preflight
        }
        guard boots[index].agents?[agent] != running else { return false }
        boots[index].agents = (boots[index].agents ?? [:]).merging([agent: running]) { _, new in new }
        boots[index].versions[agent] = running.active
        return true
    }

    /// Marks that `agent` was started, on the content last recorded for it, in boot `id`.
    /// - Returns: whether anything changed (and the log needs saving).
    public mutating func markStarted(_ agent: String, in id: String) -> Bool {
        guard let index = boots.firstIndex(where: { $0.id == id }), let record = boots[index].agents?[agent],
            record.started != true
        else { return false }
        boots[index].agents![agent]!.started = true
        return true
    }

    /// Marks that a preflight instance of `version` of `agent` runs in boot `id` from now on,
    /// or with `version` nil that it ended. The caller saves the log before the instance starts.
    /// - Returns: whether anything changed (and the log needs saving).
    public mutating func markPreflight(_ agent: String, version: String?, in id: String) -> Bool {
        guard let index = boots.firstIndex(where: { $0.id == id }), boots[index].agents?[agent] != nil,
            boots[index].agents![agent]!.preflight != version
        else { return false }
        boots[index].agents![agent]!.preflight = version
        return true
    }

    /// Marks boot `id` good.
    public mutating func markGood(_ id: String) {
        guard let index = boots.firstIndex(where: { $0.id == id }) else { return }
        boots[index].state = "good"
        boots[index].reachedGood = true
    }

    /// Marks boot `id` as cleanly shut down (backstopd stopped on SIGTERM).
    public mutating func markCleanShutdown(_ id: String) {
        guard let index = boots.firstIndex(where: { $0.id == id }) else { return }
        boots[index].cleanShutdown = true
    }

    /// The state of boot `id`, `pending` when unknown.
    public func state(of id: String) -> String {
        boots.first { $0.id == id }?.state ?? "pending"
    }

    /// Failed boots in a row just before boot `id` (the current one), newest first.
    public func consecutiveFailed(before id: String) -> Int {
        boots.filter { $0.id != id }.reversed().prefix { $0.state == "failed" }.count
    }

    /// Failed boots in a row, just before boot `id`, that count against exactly the content of
    /// `running` for `agent` (the same candidate, or the same known-good version in the same
    /// mode; ``BootRecord/countsAgainstContent(of:)``): the count a boot loop is judged on. A
    /// failed boot that is no evidence against it (the agent held stopped by an operator, a
    /// preflight running at the crash, a good boot on known-good content) ends the row.
    public func failedBootsInARow(agent: String, running: BootAgentRecord, before id: String) -> Int {
        failedBootRow(agent: agent, running: running, before: id).count
    }

    /// The boots ``failedBootsInARow(agent:running:before:)`` counts, newest first.
    public func failedBootRow(agent: String, running: BootAgentRecord, before id: String) -> [BootRecord] {
        Array(boots.filter { $0.id != id }.reversed().prefix { boot in
            guard boot.countsAgainstContent(of: agent), let record = boot.agents?[agent] else { return false }
            return record.sameContent(as: running)
        })
    }

    /// Failed boots in a row, just before boot `id`, that ended while a preflight instance of
    /// `version` of `agent` was running: they count against that staged version, whatever the
    /// agent itself ran.
    public func failedPreflightBootsInARow(agent: String, version: String, before id: String) -> Int {
        boots.filter { $0.id != id }.reversed().prefix { boot in
            boot.state == "failed" && boot.agents?[agent]?.preflight == version
        }.count
    }
}
