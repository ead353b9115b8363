@testable import BackstopCore
import Foundation
import Testing

/// README.md's fail2ban recipe, to the letter: Debian's own `fail2ban.service` (Type=simple,
/// `fail2ban-server -xf start`) under the systemd runner, its configuration directory
/// /etc/fail2ban as the content, with the recipe's `[[agent]]` table and drop-in.
extension ContainerTests {
    /// README.md's fail2ban recipe.
    static func fail2banRecipe() throws -> ReadmeSection { try ReadmeSection("## fail2ban as the agent") }

    /// The recipe's one `ini` block, a file whose first line names its path (`# /etc/...`).
    /// - Throws: when there is no such block, or its first line is no path.
    static func fail2banDropIn() throws -> (path: String, text: String) {
        let text = try fail2banRecipe().block("ini")
        guard let first = text.split(separator: "\n").first, first.hasPrefix("# /") else {
            throw HarnessError.failed("the recipe's ini block does not start with its path: \(text)")
        }
        return (String(first.dropFirst(2)), text)
    }

    /// The recipe's `[[agent]]` table, as /etc/backstop/backstop.toml.
    static func fail2banConfig() throws -> String { try fail2banRecipe().block("toml") }

    /// The recipe's drop-in for fail2ban.service, the unit disabled (as the recipe has the
    /// operator leave it, so that only backstopd starts it), the log files its jails read
    /// (auth.log, which rsyslog would make, for the packaged sshd jail), and this machine's
    /// packaged /etc/fail2ban as a base64 tar archive: the container's /etc starts empty.
    static func fail2banFiles() throws -> [String: String] {
        let dropIn = try fail2banDropIn()
        #expect(dropIn.path == "/etc/systemd/system/fail2ban.service.d/backstop.conf")
        #expect(dropIn.text.contains("ExecStartPre=/usr/bin/fail2ban-client --test\n"), "\(dropIn.text)")
        let packaged = try Command.run("/bin/bash", ["-o", "pipefail", "-c", "tar -C /etc -cz fail2ban | base64 -w0"])
        try #require(packaged.status == 0 && !packaged.output.isEmpty, "the packaged /etc/fail2ban: \(packaged.error)")
        return [
            dropIn.path: dropIn.text,
            "/etc/systemd/system-preset/00-backstop-test.preset": "disable fail2ban.service\n",
            "/etc/tmpfiles.d/fail2ban-logs.conf": "f /var/log/auth.log 0640 root root -\nf /var/log/webapp.log 0640 root root -\n",
            "/srv/fail2ban-packaged.tar.gz.base64": packaged.output,
        ]
    }

    /// Runs `body` with a booted container that has ``fail2banFiles()``, fail2ban.service not
    /// masked, and `config` (the recipe's `[[agent]]` table when nil) as backstop.toml.
    func withFail2banContainer(config: String? = nil, _ body: (Container) throws -> Void) throws {
        try withContainer(
            config: try config ?? Self.fail2banConfig(), files: try Self.fail2banFiles(),
            masked: Container.masked.filter { $0 != "fail2ban.service" }, body)
    }

    /// Makes /srv/v1 in the container: the packaged /etc/fail2ban taken over as it is, plus a
    /// jail `webapp` on /var/log/webapp.log that bans with an unreachable route (the
    /// container's private network has no firewall to add a rule to); then /srv/v2, v1 with
    /// `mistake` (a shell command run in /srv/v2) applied.
    func fail2banVersions(_ container: Container, mistake: String) throws {
        let made = try container.run("/bin/sh", "-c", #"""
            set -e
            mkdir -p /srv/packaged && base64 -d /srv/fail2ban-packaged.tar.gz.base64 | tar -xz -C /srv/packaged
            cp -a /srv/packaged/fail2ban /srv/v1
            cat > /srv/v1/filter.d/webapp.conf <<'EOF'
            [Definition]
            failregex = ^\s*webapp: login failed for \S+ from <HOST>$
            EOF
            cat > /srv/v1/jail.d/webapp.local <<'EOF'
            [webapp]
            enabled = true
            logpath = /var/log/webapp.log
            maxretry = 3
            banaction = route
            EOF
            cp -a /srv/v1 /srv/v2 && cd /srv/v2
            """# + "\n" + mistake)
        try #require(made.status == 0, "\(made.output) \(made.error)")
    }

    /// Waits (30 s at most) until fail2ban's log, /var/log/fail2ban.log, has a line with `text`.
    func waitForFail2banLog(_ container: Container, _ text: String) throws {
        let found = try container.run("/bin/sh", "-c", "timeout 30 tail -F -n +1 /var/log/fail2ban.log | grep -q -m1 -F '\(text)'")
        try #require(found.status == 0, "no '\(text)' in fail2ban's log: \(found.error)")
    }

    /// Writes three failed logins from `address` into webapp's log and waits until fail2ban bans it.
    func fail2banFailedLogins(_ container: Container, from address: String) throws {
        try container.run("/bin/sh", "-c", """
            for i in 1 2 3; do echo "$(date '+%Y-%m-%d %H:%M:%S') webapp: login failed for admin from \(address)" >> /var/log/webapp.log; done
            """)
        try waitForFail2banLog(container, "] Ban \(address)")
    }

    /// Expects fail2ban's own tools to show `address` banned by jail webapp: in its banned
    /// list, and as an unreachable route.
    func expectBanned(_ container: Container, _ address: String) throws {
        let jail = try container.run("/usr/bin/fail2ban-client", "status", "webapp")
        #expect(jail.status == 0 && jail.output.contains("Banned IP list:") && jail.output.contains(address), "\(jail.output) \(jail.error)")
        let routes = try container.run("/usr/sbin/ip", "route", "show", "type", "unreachable").output
        #expect(routes.contains("unreachable \(address) "), "\(routes)")
    }

    /// The agent's exits on v2: three, one per start, each `exited` with fail2ban's 255.
    func expectFail2banExits(_ container: Container) throws {
        let exits = try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }
        #expect(exits.count == 3, "\(exits.map { $0["MESSAGE"] ?? "" })")
        #expect(exits.allSatisfy { $0["BACKSTOP_REASON"] == "exited" && $0["BACKSTOP_EXIT_STATUS"] == "255" },
                "\(exits.map { ($0["BACKSTOP_REASON"] ?? "", $0["BACKSTOP_EXIT_STATUS"] ?? "") })")
    }

    @Test("fail2ban.service: the packaged configuration with a jail of its own is known-good and bans a test address; a filter with a broken regex makes fail2ban-server exit 255, and that version is rolled back and quarantined; fail2ban bans again on the known-good one, and after a reboot")
    func fail2banBrokenRegex() throws {
        try withFail2banContainer { container in
            try fail2banVersions(container, mistake: #"sed -i 's/for \\S+ from/for (\\S+ from/' filter.d/webapp.conf && grep -q 'for (' filter.d/webapp.conf"#)
            try #require(try container.run("/usr/bin/backstopctl", "stage", "fail2ban", "/srv/v1", "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v1")
            #expect(try container.run("/bin/readlink", "/etc/fail2ban").output == "/var/lib/backstop/fail2ban/versions/v1\n")
            let jails = try container.run("/usr/bin/fail2ban-client", "status").output
            #expect(jails.contains("Jail list:\tsshd, webapp"), "\(jails)")
            try fail2banFailedLogins(container, from: "192.0.2.10")
            try expectBanned(container, "192.0.2.10")
            try #require(try container.run("/usr/bin/backstopctl", "promote", "fail2ban", "v1").status == 0)

            try #require(try container.run("/usr/bin/backstopctl", "stage", "fail2ban", "/srv/v2", "--version", "v2", "--activate").status == 0)
            let agent = try expectRolledBack(container)
            try expectFail2banExits(container)
            #expect(agent.content.knownGood == "v1")
            // fail2ban-server says why in its own log (Debian's logtarget), not on stderr.
            try waitForFail2banLog(container, "Unable to compile regular expression")
            let shown = try container.run("/bin/systemctl", "show", "fail2ban", "-p", "ActiveState", "-p", "MainPID").output
            #expect(shown.contains("ActiveState=active") && shown.contains("MainPID=\(agent.pid ?? -1)"), "\(shown)")
            // Back on v1: the earlier ban is restored from fail2ban's database, and a new one is made.
            try waitForFail2banLog(container, "] Restore Ban 192.0.2.10")
            try expectBanned(container, "192.0.2.10")
            try fail2banFailedLogins(container, from: "192.0.2.20")
            try expectBanned(container, "192.0.2.20")

            // A reboot: the unit is disabled, so backstopd starts it, on v1, through a link made again.
            #expect(try container.run("/bin/systemctl", "is-enabled", "fail2ban.service").output.hasPrefix("disabled"))
            try container.shutDown()
            try container.boot()
            try container.waitForDecision("agent-ready", version: "v1")
            #expect(try container.run("/bin/readlink", "/etc/fail2ban").output == "/var/lib/backstop/fail2ban/versions/v1\n")
            try fail2banFailedLogins(container, from: "192.0.2.40")
            try expectBanned(container, "192.0.2.40")
        }
    }

    /// Mistakes in a version that the recipe's drop-in (`fail2ban-client --test` before each
    /// start) refuses, so that fail2ban-server never runs on them: the mistake as a shell
    /// command run in the version's directory, and what `--test` says about it.
    enum Fail2banRefusedMistake: String, CaseIterable, Sendable {
        case syntaxError = "a line without = in jail.d/webapp.local"
        case missingLogFile = "a jail whose logpath matches no file"
        case missingFilter = "a jail whose filter file does not exist, which fail2ban-server alone skips and runs on without"

        var command: String {
            switch self {
            case .syntaxError: "printf 'bantime 1h\\n' >> jail.d/webapp.local"
            case .missingLogFile: "sed -i 's|^logpath = .*|logpath = /var/log/webapp/access.log|' jail.d/webapp.local"
            case .missingFilter:
                "printf '\\n[webapp-admin]\\nenabled = true\\nfilter = webapp-admn\\nlogpath = /var/log/webapp.log\\nbanaction = route\\n' >> jail.d/webapp.local"
            }
        }

        var complaint: String {
            switch self {
            case .syntaxError: "Source contains parsing errors"
            case .missingLogFile: "Have not found any log file for webapp jail"
            case .missingFilter: "Unable to read the filter 'webapp-admn'"
            }
        }
    }

    @Test("fail2ban.service: a version that the drop-in's fail2ban-client --test refuses fails its start with 255, is rolled back and quarantined, and every jail runs and bans again", arguments: Fail2banRefusedMistake.allCases)
    func fail2banRefusedByTest(_ mistake: Fail2banRefusedMistake) throws {
        try withFail2banContainer { container in
            try fail2banVersions(container, mistake: mistake.command)
            try knownGoodThenCandidate(container, agent: "fail2ban", good: "/srv/v1", candidate: "/srv/v2")
            let agent = try expectRolledBack(container)
            try expectFail2banExits(container)
            let refused = try container.run("/bin/journalctl", "-u", "fail2ban", "--no-pager", "-o", "cat").output
            #expect(refused.contains(mistake.complaint) && refused.contains("ERROR: test configuration failed"), "fail2ban-client --test said why")
            #expect(!(try container.decisions()).contains { $0["BACKSTOP_EVENT"] == "agent-ready" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" },
                    "fail2ban-server never ran on it")
            #expect(try container.run("/bin/systemctl", "show", "fail2ban", "-p", "MainPID").output.contains("MainPID=\(agent.pid ?? -1)"))
            let jails = try container.run("/usr/bin/fail2ban-client", "status").output
            #expect(jails.contains("Jail list:\tsshd, webapp"), "\(jails)")
            try fail2banFailedLogins(container, from: "192.0.2.30")
            try expectBanned(container, "192.0.2.30")
        }
    }

    @Test("fail2ban.service taken over as the recipe says: a running fail2ban on the packaged /etc/fail2ban, copied, staged and activated through the link; the directory is set aside and fail2ban bans on the version")
    func fail2banTakeover() throws {
        try withFail2banContainer(config: "") { container in
            // The host before Backstop: the package's directory with a jail of the operator's, fail2ban running on it.
            try fail2banVersions(container, mistake: "true")
            let installed = try container.run("/bin/sh", "-c", "cp -a /srv/v1 /etc/fail2ban && systemctl start fail2ban")
            try #require(installed.status == 0, "\(installed.output) \(installed.error)")
            try fail2banFailedLogins(container, from: "192.0.2.50")

            // The recipe's steps: copy the directory, add the agent, reload backstopd, stage and activate the copy.
            try #require(try container.run("/bin/cp", "-a", "/etc/fail2ban", "/srv/fail2ban-current").status == 0)
            try Self.fail2banConfig().write(toFile: container.configDirectory + "/backstop.toml", atomically: true, encoding: .utf8)
            try #require(try container.run("/bin/systemctl", "reload", "backstopd").status == 0)
            let staged = try container.run("/usr/bin/backstopctl", "stage", "fail2ban", "/srv/fail2ban-current", "--version", "current", "--activate")
            try #require(staged.status == 0, "\(staged.output) \(staged.error)")
            try container.waitForDecision("agent-ready", version: "current")
            #expect(try container.run("/bin/readlink", "/etc/fail2ban").output == "/var/lib/backstop/fail2ban/versions/current\n")
            let setAside = try container.run("/bin/sh", "-c", "ls -d /etc/fail2ban.unexpected-*/jail.d/webapp.local")
            #expect(setAside.status == 0, "the packaged directory is set aside, not deleted: \(setAside.error)")
            try #require(try container.run("/usr/bin/backstopctl", "promote", "fail2ban", "current").status == 0)
            let agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running" && agent.content.knownGood == "current")
            #expect(try container.run("/bin/systemctl", "show", "fail2ban", "-p", "MainPID").output.contains("MainPID=\(agent.pid ?? -1)"))
            try expectBanned(container, "192.0.2.50")
            try fail2banFailedLogins(container, from: "192.0.2.60")
            try expectBanned(container, "192.0.2.60")
        }
    }
}
