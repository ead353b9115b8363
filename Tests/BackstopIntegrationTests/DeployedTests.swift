@testable import BackstopCore
import Foundation
import Testing

/// Backstop as an operator deploys it, in a container that boots systemd: the installed
/// unit with the shipped /etc/backstop/backstop.toml and sample content as `make install`
/// leaves them, and README.md's `clamd` recipe followed to the letter.
@Suite(
    .serialized, .timeLimit(.minutes(5)),
    .enabled(if: Container.available,
             "needs root, systemd-nspawn and an install tree in BACKSTOP_INSTALL_DIR (`make test` provides all three)"))
struct DeployedTests {
    /// The SHA-256 of the host's file at `path`, in hex.
    func sha256(_ path: String) throws -> String {
        String(try Command.run("/usr/bin/sha256sum", [path]).output.prefix(64))
    }

    // MARK: The shipped configuration

    @Test("the shipped backstop.toml under the shipped unit: the good sample passes preflight and is promoted, the Channel-291 sample is refused by preflight, and the good agent outlives several watchdog periods")
    func shippedConfiguration() throws {
        let installTree = try #require(Container.installTree)
        let shipped = installTree + "/etc/backstop/backstop.toml"
        try #require(try Data(contentsOf: URL(fileURLWithPath: shipped)) == Data(contentsOf: URL(fileURLWithPath: Paths.repository + "/examples/backstop.toml")),
                     "make install put examples/backstop.toml in place unchanged")
        try Container.booted(config: nil) { container in
            let bound = try container.run("/usr/bin/sha256sum", "/etc/backstop/backstop.toml").output.prefix(64)
            #expect(String(bound) == (try sha256(shipped)), "the container runs on the shipped file byte for byte")
            try #require(try container.run("/bin/systemctl", "enable", "backstopd").status == 0)
            #expect(try container.run("/bin/systemctl", "is-active", "backstopd").output.hasPrefix("active"))

            // The unit confines nothing that its children would inherit: backstopd shares the
            // mount and UTS namespaces, seccomp filters, capability bounding set and
            // no_new_privs of the container's PID 1.
            let daemon = try container.run("/bin/systemctl", "show", "backstopd", "-p", "MainPID", "--value").output
                .trimmingCharacters(in: .whitespacesAndNewlines)
            for namespace in ["mnt", "uts"] {
                let links = try ["1", daemon].map { try container.run("/bin/readlink", "/proc/\($0)/ns/\(namespace)").output }
                #expect(links[0] == links[1], "\(namespace) namespace: \(links)")
            }
            let confinement = "grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs|CapBnd):' /proc/%s/status"
            let pid1 = try container.run("/bin/sh", "-c", confinement.replacingOccurrences(of: "%s", with: "1")).output
            #expect(try container.run("/bin/sh", "-c", confinement.replacingOccurrences(of: "%s", with: daemon)).output == pid1)
            // What /proc does not show, such as a device allow-list, systemd does.
            let settings = ["PrivateTmp", "ProtectHome", "ProtectSystem", "ProtectClock", "ProtectHostname", "PrivateDevices",
                            "RestrictRealtime", "LockPersonality", "NoNewPrivileges"]
            let shown = try container.run("/bin/systemctl", "show", "backstopd", "--property=" + settings.joined(separator: ",")).output
            #expect(shown.split(separator: "\n").sorted() == settings.map { "\($0)=no" }.sorted(), "\(shown)")

            // The good sample: preflight (30 s of it, three watchdog periods), then live.
            let sample = "/usr/share/backstop/examples/content/"
            let good = try container.run("/usr/bin/backstopctl", "stage", "demo", sample + "v1-good", "--version", "v1", "--activate")
            try #require(good.status == 0, "v1 passes preflight: \(good)")
            try container.waitForDecision("agent-ready", version: "v1")
            try #require(try container.run("/usr/bin/backstopctl", "promote", "demo", "v1").status == 0)
            let promoted = try #require(try container.status().agents.first)
            #expect(promoted.content.knownGood == "v1")
            #expect(promoted.content.candidate == nil)
            let pid = try #require(promoted.pid)

            // The Channel-291 sample: refused by preflight, never loaded by the live agent.
            let bad = try container.run("/usr/bin/backstopctl", "stage", "demo", sample + "v2-channel-291", "--version", "v2", "--activate")
            #expect(bad.status == 1, "\(bad)")
            try container.waitForDecision("preflight-failed", version: "v2")
            try container.waitForDecision("content-quarantined", version: "v2")
            let decisions = try container.decisions()
            #expect(!decisions.contains { $0["BACKSTOP_CONTENT_VERSION"] == "v2" && ["agent-started", "content-activated"].contains($0["BACKSTOP_EVENT"] ?? "") },
                    "\(decisions.map { $0["MESSAGE"] ?? "" })")
            #expect(decisions.first { $0["BACKSTOP_EVENT"] == "preflight-failed" }?["BACKSTOP_REASON"] == "crashed")

            let json = try container.run("/usr/bin/backstopctl", "status", "--json")
            #expect(json.status == 0, "status exits 0: a version refused by preflight degrades nothing")
            let report = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any]
            let agent = try #require((report?["agents"] as? [[String: Any]])?.first)
            let content = try #require(agent["content"] as? [String: Any])
            #expect(agent["state"] as? String == "running")
            #expect(content["active"] as? String == "v1")
            #expect(content["known_good"] as? String == "v1")
            #expect(content["quarantined"] as? [String] == ["v2"])
            #expect(content["candidate"] is NSNull)
            #expect(agent["pid"] as? Int == Int(pid))
            #expect(try container.run("/usr/bin/backstopctl", "status", "demo").status == 0)

            // The good agent keeps sending WATCHDOG=1: watched for more than two more 10 s periods,
            // it is neither hung nor gone, and runs as the same process.
            let ended = ["agent-hung", "agent-exited"].map { "\"BACKSTOP_EVENT\":\"\($0)\"" }
            #expect(throws: HarnessError.self, "no agent-hung or agent-exited within 25 s") {
                try container.journalLines.wait("agent-hung or agent-exited", seconds: 25) { lines in
                    lines.contains { line in line.contains(container.bootID) && ended.contains { line.contains($0) } }
                }
            }
            let after = try #require(try container.status().agents.first)
            #expect(after.state == "running")
            #expect(after.pid == pid)
            #expect(after.failures.recent == 0)
            #expect(!(try container.decisions()).contains { ["agent-hung", "agent-exited"].contains($0["BACKSTOP_EVENT"] ?? "") })

            // Without the daemon, status reads the saved state and exits 3.
            try #require(try container.run("/bin/systemctl", "stop", "backstopd").status == 0)
            let offline = try container.run("/usr/bin/backstopctl", "status", "--json")
            #expect(offline.status == 3, "\(offline)")
            let saved = try JSONDecoder.backstop.decode(StatusReport.self, from: Data(offline.output.utf8))
            #expect(!saved.daemon.running)
            #expect(saved.agents.first?.content.active == "v1" && saved.agents.first?.content.quarantined == ["v2"], "\(saved)")
        }
    }

    // MARK: README.md's clamd recipe

    /// The units that README.md's clamd recipe masks (its `systemctl mask` line).
    static func maskedUnits(_ recipe: ReadmeSection) throws -> [String] {
        guard let line = recipe.text.split(separator: "\n").first(where: { $0.hasPrefix("systemctl mask ") }) else {
            throw HarnessError.failed("the recipe masks no unit")
        }
        return line.split(separator: " ").dropFirst(2).map(String.init)
    }

    /// The EICAR anti-virus test file (its MD5 is 44d88612fea8a8f36de82e1278abb02f).
    static let eicar = #"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"#

    @Test("README.md's clamd recipe, to the letter: clamd run by Backstop scans the EICAR file in the host's /tmp and in a user's home directory, and again after a reboot")
    func clamdRecipe() throws {
        let recipe = try ReadmeSection("### `clamd` run by Backstop")
        let masked = try Self.maskedUnits(recipe)
        #expect(Set(masked) == ["clamav-daemon.service", "clamav-daemon.socket"])
        let files = [
            "/etc/backstop/clamd.conf": try recipe.hereDocument("/etc/backstop/clamd.conf"),
            "/etc/tmpfiles.d/backstop-clamd.conf": try recipe.hereDocument("/etc/tmpfiles.d/backstop-clamd.conf"),
            // What Debian's clamav-daemon package made at installation, and a user with a home
            // directory as Debian 12's adduser makes it (mode 0700).
            "/etc/sysusers.d/clamav.conf": "u clamav - \"Clam AntiVirus\" /var/lib/clamav\n",
            "/etc/sysusers.d/alice.conf": "u alice - \"A user\" /home/alice\n",
        ]
        try Container.booted(config: try recipe.block("toml"), files: files, masked: Array(Set(Container.masked + masked))) { container in
            let database = "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature"
            try container.run("/bin/sh", "-c", "mkdir -p /srv/sigs-1 && echo '\(database)' > /srv/sigs-1/eicar.hdb")
            try #require(try container.run("/usr/bin/backstopctl", "stage", "clamav", "/srv/sigs-1", "--version", "sigs-1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "sigs-1", seconds: 120)
            try #require(try container.run("/usr/bin/backstopctl", "promote", "clamav", "sigs-1").status == 0)
            try expectScans(container)

            // A clean reboot: /run and the test files are gone; tmpfiles.d makes /run/clamav again
            // before backstopd starts clamd.
            try container.shutDown()
            try container.boot()
            try container.waitForDecision("agent-ready", version: "sigs-1", seconds: 120)
            try expectScans(container)
            let agent = try #require(try container.status().agents.first)
            #expect(agent.state == "running")
            #expect(agent.failures.list.isEmpty, "\(agent.failures.list)")
        }
    }

    /// Puts the EICAR file in the host's /tmp and in alice's home directory (mode 0700, the
    /// file 0600, both hers) and has clamd, asked by `clamdscan` with the paths, open and scan them.
    func expectScans(_ container: Container) throws {
        let owner = try container.run("/usr/bin/stat", "-c", "%U %a", "/run/clamav", "/var/tmp/backstop-clamd").output
        #expect(owner == "clamav 755\nclamav 700\n", "tmpfiles.d made clamd's directories: \(owner)")
        try container.run("/bin/sh", "-c", """
            install -d -m 0700 -o alice -g alice /home/alice
            printf '%s' '\(Self.eicar)' > /tmp/eicar.com && chmod 0644 /tmp/eicar.com
            cp /tmp/eicar.com /home/alice/eicar.com && chown alice:alice /home/alice/eicar.com && chmod 0600 /home/alice/eicar.com
            """)
        for path in ["/tmp/eicar.com", "/home/alice/eicar.com"] {
            let scan = try container.run("/usr/bin/clamdscan", "--config-file=/etc/backstop/clamd.conf", "--no-summary", path)
            #expect(scan.status == 1 && scan.output.contains("\(path): Eicar-Test-Signature.UNOFFICIAL FOUND"), "\(scan)")
        }
    }
}
