@testable import BackstopCore
import Foundation
import Testing

/// README's CrowdSec recipe in a container that boots systemd: Debian's own `crowdsec.service`
/// (`Type=notify`, `ExecStartPre=crowdsec -t`) under the systemd runner, crowdsec's hub items
/// (scenarios, the parsers they build on, grok patterns) as content at `config_dir`.
extension ContainerTests {
    /// README.md's section on CrowdSec, so that the tests follow what it says.
    struct CrowdsecRecipe {
        let section: ReadmeSection

        init() throws { section = try ReadmeSection("## CrowdSec as the agent") }

        /// /etc/backstop/backstop.toml: the recipe's `[[agent]]` with the test's shorter times,
        /// and with `preflight`, its preflight keys and sandbox (`preflight_sec` shortened too).
        func configuration(preflight: Bool) throws -> String {
            let toml = try section.blocks("toml", count: 2)
            let times = "probation_sec = 5\nfailure_window_sec = 120\nrestart_delay_ms = 100\nboot_good_after_sec = 2\n"
            guard preflight else { return toml[0] + times }
            guard toml[1].contains("preflight_sec = 30 ") else { throw HarnessError.failed("the recipe's preflight_sec is not 30: \(toml[1])") }
            return toml[0] + times + toml[1].replacingOccurrences(of: "preflight_sec = 30 ", with: "preflight_sec = 15 ")
        }

        /// The recipe's lines for /etc/crowdsec/config.yaml.local.
        func localConfiguration() throws -> String { try section.blocks("yaml", count: 1)[0] }

        /// The commands that take over what crowdsec runs into /srv/crowdsec-current, without its
        /// `backstopctl stage` (the tests stage that directory under ids of their own).
        func takeOver() throws -> String {
            try section.blocks("sh", count: 2)[0].split(separator: "\n").filter { !$0.hasPrefix("backstopctl ") }.joined(separator: "\n")
        }

        /// The commands that make the preflight's `preflight.yaml`.
        func preflightFiles() throws -> String { try section.blocks("sh", count: 2)[1] }
    }

    /// Where the test's log lines for crowdsec go (its acquisition, below).
    static let crowdsecLogDirectory = "/var/log/backstop-test"

    /// The hub items Debian's postinst would enable that this test's content takes over: the
    /// sshd collection's parsers and its brute-force scenario (the link in /etc/crowdsec, the
    /// item below /var/lib/crowdsec/hub).
    static let crowdsecHubItems = [
        "parsers/s00-raw/syslog-logs.yaml": "parsers/s00-raw/crowdsecurity/syslog-logs.yaml",
        "parsers/s01-parse/sshd-logs.yaml": "parsers/s01-parse/crowdsecurity/sshd-logs.yaml",
        "parsers/s02-enrich/dateparse-enrich.yaml": "parsers/s02-enrich/crowdsecurity/dateparse-enrich.yaml",
        "scenarios/ssh-bf.yaml": "scenarios/crowdsecurity/ssh-bf.yaml",
    ]

    /// What Debian's crowdsec package sets up at installation, which a volatile container's empty
    /// /etc and /var lack: its configuration files and grok patterns (this machine's), the offline
    /// hub under /var/lib/crowdsec with its data files, and the enabled hub items as links, as its
    /// postinst makes them; the Central API left out, as on the test machines. Besides: the
    /// recipe's `config.yaml.local` (after the lines Debian's postinst writes there), an
    /// acquisition that reads the test's log lines, and a preset that leaves the unit disabled,
    /// as the recipe has it (backstopd starts it).
    /// - Throws: when crowdsec's files on this machine cannot be read (its package is missing).
    static func crowdsecFiles() throws -> [String: String] {
        var files = [
            "/etc/crowdsec/config.yaml.local": "# Optimization for sqlite, see README.Debian:\ndb_config:\n  use_wal: true\n"
                + (try CrowdsecRecipe().localConfiguration()),
            "/etc/crowdsec/acquis.yaml": """
                filenames:
                  - \(crowdsecLogDirectory)/*.log
                force_inotify: true
                labels:
                  type: syslog

                """,
            "/etc/crowdsec/online_api_credentials.yaml": "# Central API not used\n",
            "/etc/systemd/system-preset/00-backstop-test.preset": "disable crowdsec.service\n",
        ]
        for name in ["config.yaml", "profiles.yaml", "simulation.yaml"] {
            files["/etc/crowdsec/" + name] = try String(contentsOfFile: "/etc/crowdsec/" + name, encoding: .utf8)
        }
        for name in try FileManager.default.contentsOfDirectory(atPath: "/etc/crowdsec/patterns") {
            files["/etc/crowdsec/patterns/" + name] = try String(contentsOfFile: "/etc/crowdsec/patterns/" + name, encoding: .utf8)
        }
        let hub = "/usr/share/crowdsec/hub"
        var tmpfiles = [
            "d /var/lib/crowdsec 0755 root root -", "d /var/lib/crowdsec/hub 0755 root root -",
            "C /var/lib/crowdsec/data - - - - /usr/share/crowdsec/data",
            "d \(crowdsecLogDirectory) 0755 root root -",
        ] + [".index.json", "parsers", "scenarios"].map { "L /var/lib/crowdsec/hub/\($0) - - - - \(hub)/\($0)" }
        let directories = Set(crowdsecHubItems.keys.flatMap { link in
            let parts = link.split(separator: "/").dropLast()
            return parts.indices.map { parts[...$0].joined(separator: "/") }
        })
        tmpfiles += directories.sorted().map { "d /etc/crowdsec/\($0) 0755 root root -" }
        tmpfiles += crowdsecHubItems.sorted { $0.key < $1.key }.map { "L /etc/crowdsec/\($0.key) - - - - /var/lib/crowdsec/hub/\($0.value)" }
        files["/etc/tmpfiles.d/crowdsec.conf"] = tmpfiles.joined(separator: "\n") + "\n"
        return files
    }

    /// Registers crowdsec with its Local API (as Debian's postinst does; the unit's
    /// `ConditionPathExists=` waits for these credentials), then takes over the content it runs
    /// with the recipe's commands, into /srv/crowdsec-current.
    func crowdsecInstalled(_ container: Container) throws {
        let registered = try container.run("/usr/bin/cscli", "machines", "add", "--auto")
        try #require(registered.status == 0, "\(registered.output) \(registered.error)")
        let takenOver = try container.run("/bin/sh", "-ec", try CrowdsecRecipe().takeOver())
        try #require(takenOver.status == 0, "\(takenOver.output) \(takenOver.error)")
    }

    /// Makes /srv/crowdsec-v2: /srv/crowdsec-current with an operator's edit of the scenario's
    /// filter, `startswith` written for expr's `startsWith`, which crowdsec refuses to load.
    func crowdsecBadScenario(_ container: Container) throws {
        let typo = #"s/^filter: "evt.Meta.log_type == 'ssh_failed-auth'"$/filter: "evt.Meta.log_type == 'ssh_failed-auth' \&\& evt.Meta.source_ip startswith '192.0.2.'"/"#
        try #require(try container.run("/bin/cp", "-r", "/srv/crowdsec-current", "/srv/crowdsec-v2").status == 0)
        try #require(try container.run("/bin/sed", "-i", typo, "/srv/crowdsec-v2/scenarios/ssh-bf.yaml").status == 0)
        try #require(try container.run("/bin/grep", "-q", "startswith", "/srv/crowdsec-v2/scenarios/ssh-bf.yaml").status == 0)
    }

    /// Stages /srv/crowdsec-current as v1, shows the running crowdsec detecting with it (a ban
    /// for 192.0.2.7 by its scenario) and waits until it has passed probation.
    func crowdsecKnownGood(_ container: Container) throws {
        try #require(try container.run("/usr/bin/backstopctl", "stage", "crowdsec", "/srv/crowdsec-current", "--version", "v1", "--activate").status == 0)
        try container.waitForDecision("agent-ready", version: "v1")
        let ban = try crowdsecBans(container, address: "192.0.2.7")
        #expect(ban.contains(",crowdsecurity/ssh-bf,ban,"), "\(ban)")
        try container.waitForDecision("content-promoted", version: "v1")
    }

    /// Writes `attempts` failed ssh logins as one user from `address` as a new log file crowdsec
    /// reads, and waits (up to 30 s) until the running crowdsec's Local API holds a ban for
    /// `address`. (One user: so only `crowdsecurity/ssh-bf` bans, not its user-enumeration sibling.)
    /// - Returns: that ban as `cscli decisions list -o raw` prints it (`id,source,ip,reason,action,...`).
    func crowdsecBans(_ container: Container, address: String, attempts: Int = 7) throws -> String {
        // Made under a name the acquisition ignores and renamed into place, so crowdsec (watching
        // the directory) reads the whole file from its start.
        let file = "\(Self.crowdsecLogDirectory)/auth-\(address).log"
        let written = try container.run("/bin/sh", "-c", """
            for i in $(seq \(attempts)); do
                echo "$(date '+%b %e %H:%M:%S') host sshd[4242]: Failed password for invalid user admin from \(address) port 4000$i ssh2"
            done > \(file).tmp && mv \(file).tmp \(file)
            """)
        try #require(written.status == 0, "\(written.error)")
        // The Local API has no call that waits for a decision (bouncers poll it too), so this asks
        // again until the ban is there or the time is up.
        let deadline = Date().addingTimeInterval(30)
        var decisions = CommandResult(status: -1, output: "", error: "")
        while Date() < deadline {
            decisions = try container.run("/usr/bin/cscli", "decisions", "list", "-o", "raw")
            if let ban = decisions.output.split(separator: "\n").first(where: { $0.contains("Ip:\(address),") }) { return String(ban) }
            usleep(250_000)
        }
        throw HarnessError.failed("no ban for \(address) within 30 s: \(decisions.output) \(decisions.error)")
    }

    @Test("crowdsec.service as Debian ships it, its `crowdsec -t` kept: a scenario with an invalid filter fails that check, is rolled back and quarantined, and crowdsec bans again with the known-good scenarios")
    func crowdsecBadScenarioRolledBack() throws {
        try withContainer(
            config: try CrowdsecRecipe().configuration(preflight: false), files: try Self.crowdsecFiles(),
            masked: Container.masked.filter { $0 != "crowdsec.service" }
        ) { container in
            try crowdsecInstalled(container)
            try crowdsecKnownGood(container)
            try crowdsecBadScenario(container)
            try #require(try container.run("/usr/bin/backstopctl", "stage", "crowdsec", "/srv/crowdsec-v2", "--version", "v2", "--activate").status == 0)

            let agent = try expectRolledBack(container)
            #expect(agent.content.knownGood == "v1")
            // Each start failed in the unit's ExecStartPre= (systemd's "control process"), with crowdsec's own reason.
            try expectCandidateExits(container, status: "1")
            let unitLog = try container.run("/bin/journalctl", "-u", "crowdsec.service", "--no-pager", "-o", "cat").output
            #expect(unitLog.components(separatedBy: "Control process exited, code=exited, status=1/FAILURE").count - 1 == 3, "\(unitLog)")
            #expect(unitLog.contains("invalid filter"), "\(unitLog)")
            let shown = try container.run("/bin/systemctl", "show", "crowdsec.service", "-p", "ExecStartPre", "-p", "MainPID").output
            #expect(shown.contains("/usr/bin/crowdsec -c /etc/crowdsec/config.yaml -t"), "the unit's own check ran: \(shown)")
            #expect(shown.contains("MainPID=\(agent.pid ?? -1)"))

            // crowdsec is back on the known-good scenario: it lists it from the link, and bans a new
            // address. (`--branch`: else cscli asks version.crowdsec.net, out of the container's reach.)
            let listed = try container.run("/usr/bin/cscli", "--branch", "master", "scenarios", "list", "-o", "json").output
            #expect(listed.contains("/etc/crowdsec/content/scenarios/ssh-bf.yaml"), "\(listed)")
            let ban = try crowdsecBans(container, address: "192.0.2.8")
            #expect(ban.contains(",crowdsecurity/ssh-bf,ban,"), "\(ban)")
            #expect(try container.run("/bin/readlink", "-f", "/etc/crowdsec/content").output.contains("/versions/v1"))
        }
    }

    @Test("crowdsec with the recipe's preflight: a scenario with an invalid filter fails `crowdsec -t` in the throwaway instance and is quarantined; the running crowdsec never loads it and goes on banning")
    func crowdsecPreflightRefusesBadScenario() throws {
        try withContainer(
            config: try CrowdsecRecipe().configuration(preflight: true), files: try Self.crowdsecFiles(),
            masked: Container.masked.filter { $0 != "crowdsec.service" }
        ) { container in
            try crowdsecInstalled(container)
            let made = try container.run("/bin/sh", "-ec", try CrowdsecRecipe().preflightFiles())
            try #require(made.status == 0, "\(made.output) \(made.error)")
            try crowdsecKnownGood(container)
            let live = try #require(try container.status().agents.first?.pid)

            try crowdsecBadScenario(container)
            let refused = try container.run("/usr/bin/backstopctl", "stage", "crowdsec", "/srv/crowdsec-v2", "--version", "v2", "--activate")
            #expect(refused.status != 0)
            #expect(refused.error.contains("failed preflight"), "\(refused.error)")
            let decisions = try container.decisions()
            let failed = try #require(decisions.first { $0["BACKSTOP_EVENT"] == "preflight-failed" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" })
            #expect(failed["BACKSTOP_REASON"] == "exited")
            #expect(failed["BACKSTOP_PREVIOUS_VERSION"] == "v1", "the known-good version was the control")
            #expect(failed["MESSAGE"]?.contains("invalid filter") == true, "crowdsec's own reason: \(failed["MESSAGE"] ?? "")")
            #expect(decisions.contains { $0["BACKSTOP_EVENT"] == "content-quarantined" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" })
            #expect(!decisions.contains { $0["BACKSTOP_EVENT"] == "agent-started" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" })

            let agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(agent.pid == live, "the running crowdsec was never restarted")
            #expect(agent.content.active == "v1")
            #expect(agent.content.quarantined == ["v2"])
            #expect(try container.run("/bin/systemctl", "show", "crowdsec.service", "-p", "MainPID").output.contains("MainPID=\(live)"))
            let ban = try crowdsecBans(container, address: "192.0.2.8")
            #expect(ban.contains(",crowdsecurity/ssh-bf,ban,"), "\(ban)")
        }
    }
}
