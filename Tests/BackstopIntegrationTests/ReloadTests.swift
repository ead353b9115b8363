@testable import BackstopCore
import Foundation
import Testing

/// Backstop's own configuration gets Backstop's medicine: the last file that loaded is kept and
/// run on when the file breaks, and a reload (SIGHUP) touches only what changed.
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled(if: Environment.isRoot, "needs root: backstopd allows staging and activation to uid 0 only"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct ReloadTests {
    static func demo(_ name: String, _ extra: String = "") -> String { DaemonHarness.demoAgent(name: name, extra: extra) }

    /// A harness whose agents `names` each run v1-good.
    func running(_ names: [String]) throws -> DaemonHarness {
        let harness = try DaemonHarness(agents: names.map { Self.demo($0) })
        try harness.start()
        for (index, name) in names.enumerated() {
            try harness.stage(Paths.sample("v1-good"), as: "v1", agent: name)
            try harness.wait(for: "agent-ready", count: index + 1)
        }
        return harness
    }

    @Test("A file with a typo at start: backstopd runs on the last configuration that loaded, the agent runs, and status exits 1 naming file, line and key")
    func startsOnTheLastGoodConfiguration() throws {
        let harness = try running(["demo"])
        defer { harness.cleanUp() }
        let kept = try #require(try LastGoodConfiguration.read(for: harness.configPath, from: harness.lastGoodFile))
        #expect(kept.text == (try String(contentsOfFile: harness.configPath, encoding: .utf8)), "the file as it loaded is kept")
        harness.stop()
        // A bad push: a misspelt key on line 7.
        try harness.rewrite(agents: [Self.demo("demo", "failur_threshold = 3")])
        let line = try #require(try String(contentsOfFile: harness.configPath, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            .firstIndex { $0.hasPrefix("failur_threshold") }) + 1
        try harness.start()
        try harness.log.wait(for: "unknown key in [[agent]]; did you mean \"failure_threshold\"?); backstopd runs on the last configuration that loaded", seconds: 10)
        try harness.wait(for: "agent-ready")
        let (report, exitCode) = try harness.status()
        #expect(exitCode == 1, "degraded")
        let configuration = try #require(report.daemon.configuration)
        #expect(configuration.running == .lastGood)
        #expect(configuration.error?.hasPrefix("\(harness.configPath):\(line): agent[0].failur_threshold: unknown key") == true, "\(configuration.error ?? "no error")")
        let agent = try #require(report.agents.first)
        #expect(agent.state == "running" && agent.content.active == "v1")
        let text = try harness.ctl("status")
        #expect(text.output.contains("does not load; running on the last configuration that loaded [degraded]"), "\(text.output)")
        #expect(text.error.contains("warning: the configuration file does not load"), "backstopctl says what it reads instead: \(text.error)")
        // The copy is the file's however its path is spelt: through a symlink, backstopctl finds it too.
        let link = harness.directory + "/link.toml"
        try #require(symlink(harness.configPath, link) == 0)
        let throughLink = try Command.run(Paths.binary("backstopctl"), ["status", "--config", link], environment: harness.serviceEnvironment)
        #expect(throughLink.status == 1 && throughLink.output.contains("[degraded]"), "\(throughLink.output) \(throughLink.error)")
        // The broken file is never kept as the last good one.
        #expect(try LastGoodConfiguration.read(for: harness.configPath, from: harness.lastGoodFile)?.text == kept.text)
    }

    @Test("Without a last good copy, a file that does not load is refused as before")
    func refusedWithoutALastGoodCopy() throws {
        let harness = try DaemonHarness(agents: [Self.demo("demo", "failur_threshold = 3")])
        defer { harness.cleanUp() }
        try harness.start(waitUntilRunning: false)
        #expect(harness.waitForExit(seconds: 20))
        #expect(harness.process?.terminationStatus == 1)
        #expect(harness.log.all.contains { $0.contains("agent[0].failur_threshold: unknown key") }, "\(harness.log.all)")
    }

    @Test("A reload keeps an unchanged agent's pid, restarts a changed one on its active content, stops a removed one and starts a new one")
    func reloadTouchesOnlyWhatChanged() throws {
        let harness = try running(["keep", "change", "gone"])
        defer { harness.cleanUp() }
        let before = Dictionary(uniqueKeysWithValues: try harness.status().report.agents.map { ($0.name, try #require($0.pid)) })
        try harness.rewrite(agents: [Self.demo("keep"), Self.demo("change", "failure_threshold = 4"), Self.demo("fresh")])
        try harness.reload(expecting: "Reloaded \(harness.configPath): restarted change; removed gone; added fresh; 1 unchanged.")
        try harness.wait(for: "agent-ready", count: 4)
        let after = try harness.status()
        #expect(after.exitCode == 0)
        #expect(after.report.daemon.configuration == StatusReport.ConfigurationStatus(path: harness.configPath, running: .file, error: nil))
        #expect(after.report.agents.map(\.name) == ["keep", "change", "fresh"])
        let agents = Dictionary(uniqueKeysWithValues: after.report.agents.map { ($0.name, $0) })
        #expect(agents["keep"]?.pid == before["keep"], "unchanged: the same process")
        #expect(agents["change"]?.pid != before["change"] && agents["change"]?.state == "running" && agents["change"]?.content.active == "v1")
        #expect(agents["change"]?.failures.threshold == 4, "the new table applies")
        #expect(!ProcessTable.isAlive(before["gone"]!), "the removed agent is stopped")
        #expect(agents["fresh"]?.state == "stopped" && agents["fresh"]?.content.active == nil, "the new agent is supervised, waiting for content")
        try harness.stage(Paths.sample("v1-good"), as: "v1", agent: "fresh")
        try harness.wait(for: "agent-ready", count: 5)
        #expect(try harness.agent("fresh").state == "running")
        // No stop or failure was recorded against the agents a reload restarted or stopped.
        let exits = harness.log.all.filter { $0.contains("event=agent-exited") }
        #expect(exits.count == 2 && exits.allSatisfy { $0.contains("stopped as asked") }, "\(exits)")
    }

    @Test("A reload that changes [daemon] is refused, and backstopctl still finds the daemon where it runs")
    func reloadOfTheDaemonTable() throws {
        let harness = try running(["demo"])
        defer { harness.cleanUp() }
        let pid = try #require(try harness.agent().pid)
        let moved = try String(contentsOfFile: harness.configPath, encoding: .utf8)
            .replacingOccurrences(of: "runtime_directory = \"\(harness.directory)/run\"", with: "runtime_directory = \"\(harness.directory)/run2\"")
        try moved.write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        try harness.reload(expecting: "Reload refused: [daemon] state_directory or runtime_directory changed; that takes a restart")
        let status = try harness.ctl("status", "--json")
        #expect(status.status == 1, "degraded: the file is not what runs; \(status.error)")
        #expect(status.error.contains("is not what backstopd runs with yet"), "\(status.error)")
        let report = try harness.status().report
        #expect(report.daemon.configuration?.running == .previous && report.daemon.configuration?.error?.contains("takes a restart") == true)
        #expect(report.agents.first?.pid == pid)
    }

    @Test("A reload whose file does not load changes nothing and says why; once fixed, the next reload applies it")
    func reloadOfABrokenFile() throws {
        let harness = try running(["demo"])
        defer { harness.cleanUp() }
        let pid = try #require(try harness.agent().pid)
        try harness.rewrite(agents: [Self.demo("demo", "failure_threshold = 0")])
        try harness.reload(expecting: "Reload refused: the configuration file does not load")
        var (report, exitCode) = try harness.status()
        #expect(exitCode == 1)
        #expect(report.daemon.configuration?.running == .previous)
        #expect(report.daemon.configuration?.error?.contains("agent[0].failure_threshold: must be greater than zero") == true)
        #expect(report.agents.first?.pid == pid && report.agents.first?.failures.threshold == 3, "nothing changed")
        try harness.rewrite(agents: [Self.demo("demo", "failure_threshold = 5")])
        try harness.reload(expecting: "Reloaded \(harness.configPath): restarted demo.")
        try harness.wait(for: "agent-ready", count: 2)
        (report, exitCode) = try harness.status()
        #expect(exitCode == 0 && report.daemon.configuration?.error == nil)
        #expect(report.agents.first?.failures.threshold == 5)
    }
}
