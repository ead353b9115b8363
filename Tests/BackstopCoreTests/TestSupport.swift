import Foundation
import Testing
@testable import BackstopCore

// MARK: - Time

/// The moment `seconds` after an arbitrary boot: monotonic and wall clock advance together,
/// so tests drive time by choosing numbers instead of sleeping.
func moment(_ seconds: Double) -> Moment {
    Moment(monotonicSeconds: seconds, wall: Date(timeIntervalSince1970: 1_750_000_000 + seconds))
}

// MARK: - Reading policy actions

extension Array where Element == PolicyAction {
    /// The decisions among the actions, in order.
    var decisions: [Decision] {
        compactMap { if case .record(let decision) = $0 { decision } else { nil } }
    }

    /// The journal events among the actions, in order.
    var events: [EventKind] { decisions.map(\.event) }

    /// Every `.spawn`, in order.
    var spawns: [PolicyAction] {
        filter { if case .spawn = $0 { true } else { false } }
    }

    /// The deadline of the last `.arm` of `timer`, nil when it was not armed.
    func deadline(of timer: PolicyTimer) -> Double? {
        compactMap { action -> Double? in
            if case .arm(let armed, let deadline) = action, armed == timer { return deadline }
            return nil
        }.last
    }

    /// The actions after the first decision of kind `event` (empty when there is none).
    func after(_ event: EventKind) -> [PolicyAction] {
        guard let index = firstIndex(where: { if case .record(let d) = $0 { d.event == event } else { false } })
        else { return [] }
        return Array(self[(index + 1)...])
    }

    /// The first decision of kind `event`.
    func decision(_ event: EventKind) -> Decision? {
        decisions.first { $0.event == event }
    }
}

// MARK: - Ledgers

/// A record as the store would return it; the digest only has to be unique.
func record(_ id: String, stagedAt seconds: Double = 0) -> VersionRecord {
    VersionRecord(id: id, digest: "digest-of-" + id, fileCount: 1, totalBytes: 1, stagedAt: moment(seconds).wall)
}

/// A ledger with `knownGood` promoted oldest first, `staged` versions never activated,
/// and `active` (a known-good one, or nil) as the active version.
func makeLedger(knownGood: [String] = [], staged: [String] = [], active: String? = nil) -> ContentLedger {
    var ledger = ContentLedger()
    for (index, id) in knownGood.enumerated() {
        ledger.add(record(id))
        ledger.promote(id, at: moment(Double(index)).wall)
    }
    for id in staged { ledger.add(record(id)) }
    if let active { ledger.activate(active) }
    return ledger
}

// MARK: - Driving the policy

extension AgentPolicy {
    /// Carries an agent the policy just asked to spawn through started (at `seconds`) and
    /// ready (one second later: READY=1 with `notify`, else the `startedAfter` timer).
    /// - Returns: the actions of both steps.
    @discardableResult
    mutating func startAndBecomeReady(at seconds: Double, pid: Int32 = 4242) -> [PolicyAction] {
        precondition(phase.isStarting, "the policy has not asked for a spawn (phase \(phase))")
        var actions = handle(.agentStarted(pid: pid), at: moment(seconds))
        if settings.notify {
            actions += handle(.agentReady, at: moment(seconds + 1))
        } else {
            let deadline = actions.deadline(of: .startedAfter)!
            actions += handle(.timerFired(.startedAfter, deadline: deadline), at: moment(deadline))
        }
        return actions
    }

    /// The agent the policy asked to spawn starts at `seconds` and dies of `signal` right away
    /// (before it counts as ready).
    @discardableResult
    mutating func startAndCrash(at seconds: Double, signal: Int32 = SIGSEGV) -> [PolicyAction] {
        precondition(phase.isStarting, "the policy has not asked for a spawn (phase \(phase))")
        return handle(.agentStarted(pid: 4242), at: moment(seconds))
            + handle(.agentExited(.signaled(signal: signal)), at: moment(seconds + 0.5))
    }

    /// Fires the armed restart timer at its deadline.
    @discardableResult
    mutating func fireRestart() -> [PolicyAction] {
        let deadline = timers[.restart]!
        return handle(.timerFired(.restart, deadline: deadline), at: moment(deadline))
    }

    /// Crashes the agent on every start until the policy stops restarting it from backoff
    /// (a crash loop and whatever the escalation does next), starting at `seconds`.
    /// - Returns: all actions, and the time after the last crash.
    mutating func crashUntilCrashLoop(from seconds: Double, signal: Int32 = SIGSEGV) -> (actions: [PolicyAction], end: Double) {
        var now = seconds
        var actions: [PolicyAction] = []
        for _ in 0..<settings.failureThreshold {
            actions += startAndCrash(at: now, signal: signal)
            now += 1
            guard phase == .backoff else { break }
            actions += fireRestart()
            now = max(now, timers[.restart] ?? now) + 1
        }
        return (actions, now)
    }
}

// MARK: - Files

/// A fresh directory under the system temp directory; remove it with ``ContentStore/removeTree(_:)``.
func makeTemporaryDirectory() throws -> String {
    let path = FileManager.default.temporaryDirectory.path + "/backstop-unit-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Writes `text` to `path`, creating parent directories.
func write(_ text: String, to path: String, mode: mode_t = 0o644) throws {
    try FileManager.default.createDirectory(
        atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    #expect(chmod(path, mode) == 0)
}

/// The permission bits of `path` (not following a symlink).
func permissions(_ path: String) -> mode_t {
    var info = stat()
    guard lstat(path, &info) == 0 else { return 0xFFFF }
    return info.st_mode & 0o7777
}

/// The target of the symlink at `path`, nil when it is not one.
func linkTarget(_ path: String) -> String? {
    try? FileManager.default.destinationOfSymbolicLink(atPath: path)
}

/// The names in a directory, sorted; empty when it does not exist.
func names(in directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
}

/// Stages the bundle at `path` into `store` as backstopd stages one backstopctl sent:
/// opened (``OpenBundle/open(_:)``), copied through its descriptor, closed.
func stage(
    _ path: String, into store: ContentStore, id: String?, existing: Set<String> = [], quarantined: [String: String] = [:], at date: Date
) throws(StoreError) -> VersionRecord {
    let bundle = try OpenBundle.open(path)
    defer { bundle.close() }
    return try store.stage(from: bundle, id: id, existing: existing, quarantined: quarantined, rules: StagingRules(), at: date)
}
