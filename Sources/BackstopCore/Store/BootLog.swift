import Foundation

/// One boot as backstopd saw it.
public struct BootRecord: Codable, Sendable, Equatable {
    /// The kernel's boot ID (32 hex digits, sd_id128_get_boot(3)).
    public var id: String
    /// When backstopd first started in this boot.
    public var startedAt: Date
    /// `pending` until every agent with content stayed healthy for its
    /// `boot_good_after_sec`, then `good`.
    public var state: String
    /// The active version of each agent when backstopd started in this boot.
    public var versions: [String: String]

    enum CodingKeys: String, CodingKey {
        case id, state, versions
        case startedAt = "started_at"
    }

    /// A record of boot `id`; `state` is `pending` or `good`.
    public init(id: String, startedAt: Date, state: String, versions: [String: String]) {
        self.id = id
        self.startedAt = startedAt
        self.state = state
        self.versions = versions
    }
}

/// The recent boots, oldest first: `<state_directory>/boots.json`, written crash-safely.
public struct BootLog: Codable, Sendable, Equatable {
    /// How many boots are kept; older ones are dropped, so the file stays small.
    public static let capacity = 100

    /// The boots, oldest first, at most ``capacity``.
    public var boots: [BootRecord] = []

    public init() {}

    /// The file below `stateDirectory`.
    public static func path(stateDirectory: String) -> String { stateDirectory + "/boots.json" }

    /// Reads the log; a missing or unreadable file is an empty log (it is a record, not a control input).
    public static func load(stateDirectory: String) -> BootLog {
        let path = path(stateDirectory: stateDirectory)
        guard let data = FileManager.default.contents(atPath: path),
            let log = try? JSONDecoder.backstop.decode(BootLog.self, from: data)
        else { return BootLog() }
        return log
    }

    /// Writes the log crash-safely.
    /// - Throws: `Errno` from the file system.
    public func save(stateDirectory: String) throws {
        try DurableFile.write(try JSONEncoder.backstop.encode(self), to: Self.path(stateDirectory: stateDirectory))
    }

    /// Adds the current boot unless it is there already (a daemon restart within one boot).
    public mutating func enter(_ record: BootRecord) {
        guard !boots.contains(where: { $0.id == record.id }) else { return }
        boots.append(record)
        if boots.count > Self.capacity { boots.removeFirst(boots.count - Self.capacity) }
    }

    /// Marks boot `id` good.
    public mutating func markGood(_ id: String) {
        guard let index = boots.firstIndex(where: { $0.id == id }) else { return }
        boots[index].state = "good"
    }

    /// The state of boot `id`, `pending` when unknown.
    public func state(of id: String) -> String {
        boots.first { $0.id == id }?.state ?? "pending"
    }
}
