@testable import BackstopCore
import Foundation
import Testing

/// The control socket as a hostile agent and a hostile reader meet it, with systemd as PID 1:
/// a root agent in either engine gets nothing from backstopd, and a reader's flood of
/// refused calls takes no decision out of the journal.
@Suite(
    .serialized, .timeLimit(.minutes(5)),
    .enabled(if: Container.available,
             "needs root, systemd-nspawn and an install tree in BACKSTOP_INSTALL_DIR (`make test` provides all three)"))
struct ControlRefusalTests {
    /// An agent (Python) run as `agent.py NAME SOCKET DIRECTORY` that, once SOCKET exists,
    /// calls backstopd there: GetInfo, GetStatus, Promote of its own v1 and Stop of agent
    /// `other`, one connection each. It writes each reply to DIRECTORY/NAME and exits;
    /// started again, it only waits.
    static let probeAgent = """
        import json, os, socket, sys, time
        name, path, directory = sys.argv[1:4]
        out = directory + "/" + name
        if os.path.exists(out):
            time.sleep(100000)
        while not os.path.exists(path):
            time.sleep(0.1)
        calls = [("org.varlink.service.GetInfo", {}), ("io.backstop.Manager.GetStatus", {}),
                 ("io.backstop.Manager.Promote", {"agent": name, "version": "v1"}),
                 ("io.backstop.Manager.Stop", {"agent": "other"})]
        lines = []
        for method, parameters in calls:
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            client.sendall(json.dumps({"method": method, "parameters": parameters}).encode() + b"\\0")
            reply = b""
            while not reply.endswith(b"\\0"):
                chunk = client.recv(65536)
                if not chunk:
                    break
                reply += chunk
            client.close()
            lines.append(method + " " + reply.rstrip(b"\\0").decode())
        with open(out + ".part", "w") as file:
            file.write("\\n".join(lines) + "\\n")
        os.rename(out + ".part", out)

        """

    static let probeConfig = """
        [[agent]]
        name = "other"
        exec = ["/usr/libexec/backstop/backstop-demo-agent", "--content", "{content}"]
        notify = true
        failure_window_sec = 60
        restart_delay_ms = 100

        """ + probeAgentConfig(name: "direct", engine: "bubblewrap") + probeAgentConfig(name: "unit", engine: "systemd")

    /// A root agent without capabilities that runs ``probeAgent`` under the sandbox `engine`.
    static func probeAgentConfig(name: String, engine: String) -> String {
        """
        [[agent]]
        name = "\(name)"
        exec = ["/usr/bin/python3", "{content}/agent.py", "\(name)", "/run/agent-control/io.backstop.Manager", "/var/lib/probe-out"]
        failure_window_sec = 60
        restart_delay_ms = 100
        [agent.sandbox]
        engine = "\(engine)"
        user = "root"
        capabilities = []
        read_write_paths = ["/var/lib/probe-out"]

        """
    }

    @Test("a root agent without capabilities, under bubblewrap and as a transient unit, has every control call refused (GetInfo, GetStatus, Promote of its own candidate, Stop of another agent), with an error that says why")
    func rootAgentsAreRefused() throws {
        let files = [
            "/srv/probe/v1/agent.py": Self.probeAgent,
            // Before backstopd starts (it is ordered after systemd-tmpfiles-setup.service).
            "/etc/tmpfiles.d/probe.conf": "d /var/lib/probe-out 0755 root root -\nd /run/agent-control 0755 root root -\n",
        ]
        try Container.booted(config: Self.probeConfig, files: files) { container in
            try #require(try container.run("/usr/bin/backstopctl", "stage", "other", ContainerTests.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready")
            for agent in ["direct", "unit"] {
                let staged = try container.run("/usr/bin/backstopctl", "stage", agent, "/srv/probe/v1", "--version", "v1", "--activate")
                try #require(staged.status == 0, "\(staged)")
            }
            // The agents reach the socket through a second name of their own: only the call's
            // origin may decide, not whether the runtime directory is in their view.
            let linked = try container.run("/bin/ln", "/run/backstop/io.backstop.Manager", "/run/agent-control/io.backstop.Manager")
            try #require(linked.status == 0, "\(linked)")
            for agent in ["direct", "unit"] {
                try container.waitInBoot("agent-exited of \(agent)") { lines in
                    lines.contains { $0.contains("\"BACKSTOP_EVENT\":\"agent-exited\"") && $0.contains("\"BACKSTOP_AGENT\":\"\(agent)\"") }
                }
                let replies = try container.run("/bin/cat", "/var/lib/probe-out/" + agent).output.split(separator: "\n")
                #expect(replies.count == 4, "\(agent): \(replies)")
                for reply in replies {
                    #expect(reply.contains("\"error\":\"io.backstop.Manager.PermissionDenied\"")
                        && reply.contains("calls from a supervised agent are refused: it belongs to agent \(agent)"), "\(agent): \(reply)")
                    #expect(!reply.contains("\"agents\""), "\(agent) learnt nothing of the agents: \(reply)")
                }
            }
            let status = try container.status()
            let other = try #require(status.agents.first { $0.name == "other" })
            #expect(other.state == "running" && !other.stoppedByOperator, "the Stop of another agent was refused")
            for agent in ["direct", "unit"] {
                #expect(status.agents.first { $0.name == agent }?.content.knownGood == nil, "\(agent) did not promote its own candidate")
            }
            // The root operator is still served (exit 1: the probe agents restart, never ready).
            let served = try container.run("/usr/bin/backstopctl", "status")
            #expect([0, 1].contains(served.status) && served.output.contains("other"), "\(served)")
        }
    }

    /// As many `Stop` calls as it can, from `clients` processes, until SIGTERM (`systemctl
    /// stop`); each connection makes 50 calls. Then writes the number of calls made (or what
    /// was not refused) to /run/flood/count and exits.
    static let flood = """
        import json, os, signal, socket, sys
        path = "/run/backstop/io.backstop.Manager"
        call = json.dumps({"method": "io.backstop.Manager.Stop", "parameters": {"agent": "demo"}}).encode() + b"\\0"
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        readers = []
        for _ in range(int(sys.argv[1])):
            read_end, write_end = os.pipe()
            if os.fork() == 0:
                os.close(read_end)
                count = 0
                while not stopping:
                    client = socket.socket(socket.AF_UNIX)
                    client.connect(path)
                    for _ in range(50):
                        client.sendall(call)
                        reply = b""
                        while not reply.endswith(b"\\0"):
                            chunk = client.recv(65536)
                            if not chunk:
                                break
                            reply += chunk
                        if b"PermissionDenied" not in reply:
                            os.write(write_end, b"not refused: " + reply)
                            os._exit(1)
                        count += 1
                    client.close()
                os.write(write_end, str(count).encode())
                os._exit(0)
            os.close(write_end)
            readers.append(read_end)
        said = [os.read(end, 65536).decode() for end in readers]
        with open("/run/flood/count", "w") as file:
            file.write(str(sum(int(text) for text in said)) if all(text.isdigit() for text in said) else " ".join(said))

        """

    @Test("a member of group backstop flooding the socket with refused Stop calls during a crash loop takes no decision out of the journal or out of backstopctl history; the refusals are few entries at debug priority")
    func floodOfRefusedCallsKeepsDecisions() throws {
        // A lower burst than journald's default: the decisions must not depend on how much
        // room journald happens to leave (it scales the burst with the free disk space).
        let files = ["/etc/systemd/journald.conf.d/50-burst.conf": "[Journal]\nRateLimitIntervalSec=30s\nRateLimitBurst=200\n"]
        try Container.booted(config: ContainerTests.config, files: files) { container in
            let group = try container.run("/usr/bin/getent", "group", "backstop")
            try #require(group.status == 0, "systemd-sysusers makes group backstop: \(group)")
            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", ContainerTests.sample("v1-good"), "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready")
            try #require(try container.run("/usr/bin/backstopctl", "promote", "demo", "v1").status == 0)

            // The flood runs as nobody, a member of group backstop, beside the test, until stopped.
            let started = try container.run(
                "/usr/bin/systemd-run", "--unit=flood", "--quiet", "-p", "User=nobody", "-p", "SupplementaryGroups=backstop",
                "-p", "RuntimeDirectory=flood", "-p", "RuntimeDirectoryPreserve=yes", "/usr/bin/python3", "-c", Self.flood, "4")
            try #require(started.status == 0, "\(started)")
            try container.waitInBoot("the flood's first refused call") { lines in lines.contains { $0.contains("Denied a control request") } }

            try #require(try container.run("/usr/bin/backstopctl", "stage", "demo", ContainerTests.sample("v2-channel-291"), "--version", "v2", "--activate").status == 0)
            // The decisions are waited for as they reach the journal: on a journal that dropped
            // them, these waits fail.
            try container.waitForDecision("rollback", reason: "crash-loop", seconds: 90)
            try container.waitForDecision("agent-ready", version: "v1", count: 2, seconds: 30)

            try container.run("/bin/systemctl", "stop", "flood")
            let said = try container.run("/bin/cat", "/run/flood/count").output
            let calls = try #require(Int(said.trimmingCharacters(in: .whitespacesAndNewlines)), "the flood said: \(said)")
            print("refused Stop calls of the flood: \(calls)")
            #expect(calls >= 2000, "a flood: \(calls) calls")

            // Every decision of the crash loop, in the journal and in history.
            let history = try container.run("/usr/bin/backstopctl", "history", "demo", "--json").output.split(separator: "\n").compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
            }.map { $0.compactMapValues { $0 as? String } }
            for (source, decisions) in [("journal", try container.decisions()), ("history", history)] {
                let crashes = decisions.filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }
                #expect(crashes.count == 3 && crashes.allSatisfy { $0["BACKSTOP_SIGNAL"] == "SIGSEGV" }, "\(source): \(crashes)")
                #expect(decisions.contains { $0["BACKSTOP_EVENT"] == "content-quarantined" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }, "\(source)")
                #expect(decisions.contains { $0["BACKSTOP_EVENT"] == "rollback" && $0["BACKSTOP_REASON"] == "crash-loop" }, "\(source)")
                #expect(decisions.contains { $0["BACKSTOP_EVENT"] == "crash-loop" }, "\(source)")
            }
            let journald = try container.run("/bin/journalctl", "-b", "--no-pager", "-o", "cat", "SYSLOG_IDENTIFIER=systemd-journald").output
            #expect(!journald.split(separator: "\n").contains { $0.contains("Suppressed") && $0.contains("backstopd") },
                    "journald dropped none of backstopd's entries: \(journald)")
            let refusals = try container.run("/bin/journalctl", "-b", "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=backstopd").output
                .split(separator: "\n").filter { $0.contains("Denied a control request") }
            print("journal entries about them: \(refusals.count)")
            #expect(!refusals.isEmpty && refusals.count <= 3 * ControlServer.maximumRefusalEntries, "\(refusals.count) entries for \(calls) refused calls")
            #expect(refusals.allSatisfy { $0.contains("\"PRIORITY\":\"7\"") }, "\(refusals.prefix(3))")
            #expect(try container.status().agents.first?.state == "running", "no refused Stop stopped the agent")
        }
    }
}
