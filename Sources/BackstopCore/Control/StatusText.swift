import Foundation

/// The human form of `backstopctl status` and `content list`, laid out like `systemctl status`.
public enum StatusText {
    /// The status report as text; `colour` adds ANSI colours to the state dots (for terminals).
    public static func render(_ report: StatusReport, colour: Bool) -> String {
        var text = ""
        let daemonDot = dot(report.daemon.running ? "running" : "stopped", colour: colour)
        if report.daemon.running {
            text += "\(daemonDot) backstopd \(report.daemon.version) - running (pid \(report.daemon.pid.map(String.init) ?? "?"))\n"
        } else {
            text += "\(daemonDot) backstopd - not running (state as last saved)\n"
        }
        if let configuration = report.daemon.configuration, let error = configuration.error {
            let running = configuration.running == .lastGood ? "the last configuration that loaded" : "the configuration loaded before"
            text += "    Config: \(configuration.path) does not load; running on \(running) [degraded]\n"
            text += "  Degraded: \(error)\n"
        }
        text += "      Boot: \(report.boot.id.isEmpty ? "unknown" : report.boot.id) \(report.boot.state)"
        text += report.boot.consecutiveFailed > 0 ? ", \(report.boot.consecutiveFailed) failed boot(s) before it\n" : "\n"
        for agent in report.agents {
            text += "\n\(dot(agent.state, colour: colour)) \(agent.name) - \(agent.state)"
            text += agent.stoppedByOperator ? " (by an operator; `backstopctl start \(agent.name)` starts it)" : ""
            text += agent.pid.map { " (pid \($0))" } ?? ""
            text += agent.degraded ? " [degraded]\n" : "\n"
            if let reason = agent.degradedReason { text += "  Degraded: \(reason)\n" }
            if let bootLoop = agent.bootLoop, agent.degradedReason?.hasPrefix("boot loop") != true {
                text += " Boot loop: \(bootLoop.failedBoots) failed boots on \(bootLoop.version), no candidate content to roll back\n"
            }
            text += "   Content: active \(agent.content.active ?? "-"), known-good \(agent.content.knownGood ?? "-")"
            text += ", candidate \(agent.content.candidate ?? "-")\n"
            if let probation = agent.probation {
                text += " Probation: \(probation.elapsedSec) of \(probation.requiredSec) s of healthy running\n"
            }
            if !agent.content.quarantined.isEmpty {
                text += "Quarantine: \(agent.content.quarantined.joined(separator: ", "))\n"
            }
            text += "  Failures: \(agent.failures.recent) against the content in the last \(agent.failures.windowSec) s (crash loop at \(agent.failures.threshold))\n"
            for failure in agent.failures.list {
                var detail = failure.signal ?? failure.exitStatus.map { "exit code \($0)" }
                let stoppedByBackstop: Set<String> = [FailureReason.hung.rawValue, FailureReason.startTimeout.rawValue, FailureReason.healthCheck.rawValue]
                if stoppedByBackstop.contains(failure.reason), let signal = failure.signal { detail = "(stopped with \(signal))" }
                let counted = failure.attribution == Attribution.content.rawValue ? "" : " (\(failure.attribution), not counted)"
                let words = [rfc3339(failure.at), failure.reason, detail, "on \(failure.version ?? "-")",
                             failure.obstacle.map { "(output: \($0))" }].compactMap { $0 }
                text += "            \(words.joined(separator: " "))\(counted)\n"
            }
            if let preflight = agent.lastPreflightFailure {
                text += " Preflight: \(preflight.message)\n"
            }
            if let rollback = agent.lastRollback {
                text += "  Rollback: \(rollback.from) -> \(rollback.to) (\(rollback.reason)) at \(rfc3339(rollback.at))\n"
            }
            if let status = agent.statusText { text += "    Status: \"\(status)\"\n" }
        }
        return text
    }

    /// What `backstopctl sandbox` adds when the agent's output showed the sandbox in its way:
    /// the setting to open, the obstacle and the version it failed on; nil when nothing showed.
    public static func obstacle(of agent: StatusReport.Agent) -> String? {
        let shown = agent.firstContentFailure.flatMap { failing in failing.obstacle.map { ($0, failing.version) } }
            ?? agent.failures.list.last(where: { $0.obstacle != nil }).map { ($0.obstacle!, $0.version ?? "-") }
        guard let (word, version) = shown, let obstacle = SandboxObstacle(rawValue: word) else { return nil }
        return "in the way:\n  \(obstacle.setting)  the agent's output on content \(version) showed \(obstacle.explanation): \(obstacle.remedy)\n"
    }

    /// One line per version, oldest first, the active one marked with `*`; `legend` adds the
    /// headings. FILES is `gone` for a quarantined version whose files were removed; SIGNED
    /// names the trusted key that signed its bundle, `-` when unsigned.
    public static func versionTable(_ versions: [VersionRecord], active: String?, legend: Bool = true) -> String {
        var text = legend ? "  VERSION                          STANDING     FILES  STAGED                SHA256           SIGNED\n" : ""
        for version in versions {
            let marker = version.id == active ? "*" : " "
            let files = version.filesRemovedAt == nil ? String(version.fileCount) : "gone"
            text += "\(marker) \(pad(version.id, 32)) \(pad(version.standing.rawValue, 12)) \(pad(files, 6)) "
            text += "\(rfc3339(version.stagedAt)) \(version.digest.prefix(16)) \(version.signedBy ?? "-")\n"
        }
        return text
    }

    /// One line per boot, oldest first, the current one marked with `*`.
    public static func bootTable(_ boots: [BootRecord], current: String?, legend: Bool = true) -> String {
        var text = legend ? "  BOOT                             STARTED               STATE    VERSIONS\n" : ""
        for boot in boots {
            let marker = boot.id == current ? "*" : " "
            let versions = boot.versions.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            text += "\(marker) \(boot.id) \(rfc3339(boot.startedAt)) \(pad(boot.state, 8)) \(versions)\n"
        }
        return text
    }

    static func dot(_ state: String, colour: Bool) -> String {
        guard colour else { return "●" }
        let code: String
        switch state {
        case "running": code = "32"
        case "starting", "backoff", "safe-mode": code = "33"
        case "given-up": code = "31"
        default: code = "0"
        }
        return "\u{1B}[\(code)m●\u{1B}[0m"
    }

    static func pad(_ value: String, _ width: Int) -> String {
        value.count >= width ? value : value + String(repeating: " ", count: width - value.count)
    }

    static func rfc3339(_ date: Date) -> String {
        ISO8601DateFormatter().string(from: date)
    }
}

/// The forms of `backstopctl history`.
public enum HistoryText {
    /// `2026-11-29T07:05:26.123Z rollback            demo     v1       Rolled agent demo back ...`
    public static func line(_ entry: JournalEntry) -> String {
        let agent = entry.fields["BACKSTOP_AGENT"] ?? "-"
        let version = entry.fields["BACKSTOP_CONTENT_VERSION"] ?? "-"
        return "\(time(entry.time)) \(StatusText.pad(entry.event, 20)) \(StatusText.pad(agent, 8)) "
            + "\(StatusText.pad(version, 8)) \(entry.fields["MESSAGE"] ?? "")"
    }

    /// One JSON object: `time` (RFC 3339 with milliseconds) and the entry's fields, keys sorted.
    public static func json(_ entry: JournalEntry) -> String {
        var object = entry.fields
        object["time"] = time(entry.time)
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// Decisions come in bursts: milliseconds keep them apart.
    static func time(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }
}
