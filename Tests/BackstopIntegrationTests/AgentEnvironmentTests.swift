import Foundation
import Testing
@testable import BackstopCore

/// What an agent's processes find in their environment when backstopd itself runs with what
/// systemd gives a service (systemd.exec(5)): backstopd's watchdog, notify socket, sockets,
/// directories and invocation must never reach an agent.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.isRoot, "needs root: agents run in bubblewrap sandboxes, which need it without user namespaces"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3 for the reporting agent: `make test` installs it"))
struct AgentEnvironmentTests {
    /// The variables systemd sets for backstopd.service, with values that would mislead an agent.
    static let serviceEnvironment = [
        "WATCHDOG_PID": "1", "WATCHDOG_USEC": "30000000", "NOTIFY_SOCKET": "/run/systemd/notify",
        "LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "control", "INVOCATION_ID": "0123456789abcdef0123456789abcdef",
        "JOURNAL_STREAM": "8:12345", "STATE_DIRECTORY": "/var/lib/backstop", "RUNTIME_DIRECTORY": "/run/backstop",
        "CONFIGURATION_DIRECTORY": "/etc/backstop", "CREDENTIALS_DIRECTORY": "/run/credentials/backstopd.service",
        "MAINPID": "1", "SYSTEMD_EXEC_PID": "1", "MANAGERPID": "1", "HOME": "/root", "BACKSTOP_SECRET_OF_THE_DAEMON": "x",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_TIME": "C",
    ]

    @Test("An agent gets PATH, the locale, its `environment` and Backstop's own variables (WATCHDOG_PID its own pid), and nothing else of backstopd's")
    func liveAgentEnvironment() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        // Reports its pid and environment, then says READY=1 on its notify socket.
        let content = try scratch.makeDirectory("content", files: ["report.py": """
            import json, os, socket, sys, time
            with open(sys.argv[1] + ".tmp", "w") as report:
                json.dump({"pid": os.getpid(), "environment": dict(os.environ)}, report)
            os.rename(sys.argv[1] + ".tmp", sys.argv[1])
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
            while True:
                notify.sendto(b"WATCHDOG=1", os.environ["NOTIFY_SOCKET"])
                time.sleep(10)
            """])
        let reportPath = scratch.path + "/report.json"
        let harness = try DaemonHarness(agents: ["""
            name = "reporter"
            exec = ["/usr/bin/python3", "{content}/report.py", "\(reportPath)"]
            notify = true
            watchdog_sec = 60
            environment = ["AGENT_MODE=strict", "LANG=C.UTF-8", "AGENT_MODE=audit", "EMPTY="]
            """])
        defer { harness.cleanUp() }
        try harness.start(environment: Self.serviceEnvironment)
        try harness.stage(content, as: "v1", agent: "reporter")
        try harness.wait(for: "agent-ready", seconds: 30)
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: reportPath))) as? [String: Any])
        let environment = try #require(report["environment"] as? [String: String])
        let pid = try #require(report["pid"] as? Int)
        let agent = try harness.agent("reporter")
        #expect(agent.pid.map(Int.init) == pid, "the reported pid is the agent's")
        let versionPath = harness.directory + "/state/reporter/versions/v1"
        // bash, the sandbox's last step before the agent, adds SHLVL.
        #expect(environment.filter { $0.key != "SHLVL" } == [
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_TIME": "C",
            "AGENT_MODE": "audit", "EMPTY": "",
            "BACKSTOP_CONTENT": versionPath, "BACKSTOP_CONTENT_VERSION": "v1", "BACKSTOP_STORE": harness.directory + "/state/reporter",
            "NOTIFY_SOCKET": harness.directory + "/run/notify/reporter", "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": String(pid),
        ])
    }

    @Test("A probe gets the same clean environment, with BACKSTOP_AGENT_PID")
    func probeEnvironment() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let content = try scratch.makeDirectory("content", files: ["rules": "allow\n"])
        let reportPath = scratch.path + "/probe.env"
        let harness = try DaemonHarness(agents: ["""
            name = "probed"
            exec = ["/bin/sleep", "3600"]
            ready_check_exec = ["/bin/sh", "-c", "env > \(reportPath).tmp && mv \(reportPath).tmp \(reportPath)"]
            environment = ["AGENT_MODE=audit"]
            """])
        defer { harness.cleanUp() }
        try harness.start(environment: Self.serviceEnvironment)
        try harness.stage(content, as: "v1", agent: "probed")
        try harness.wait(for: "agent-ready", seconds: 30)
        let names = Set(try String(contentsOfFile: reportPath, encoding: .utf8).split(separator: "\n").compactMap {
            $0.split(separator: "=", maxSplits: 1).first.map(String.init)
        })
        // sh adds PWD (and OLDPWD is never set); everything else is Backstop's choice.
        #expect(names.subtracting(["PWD"]) == [
            "PATH", "LANG", "LC_TIME", "AGENT_MODE", "BACKSTOP_CONTENT", "BACKSTOP_CONTENT_VERSION", "BACKSTOP_PROBE_STORE",
            "BACKSTOP_AGENT_PID",
        ])
    }

    @Test("Under backstopd's own watchdog variables, the demo agent's watchdog heartbeats reach Backstop: a preflight with watchdog_sec passes")
    func watchdogOfTheAgentItself() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent(extra: """
            notify = true
            watchdog_sec = 1
            preflight_sec = 3
            [agent.sandbox]
            user = "nobody"
            """)])
        defer { harness.cleanUp() }
        try harness.start(environment: Self.serviceEnvironment)
        let staged = try harness.ctl("stage", "demo", Paths.sample("v1-good"), "--version", "v1", "--activate")
        #expect(staged.status == 0, "preflight of good content: \(staged.error)")
        try harness.wait(for: "agent-ready", seconds: 30)
        #expect(try harness.agent().content.quarantined == [])
    }
}
