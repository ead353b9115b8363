import Foundation
import Testing

/// README's "USBGuard as the agent", followed in a container that boots systemd: Debian's
/// own `usbguard.service` (`Type=forking`), its rules folder as the content.
extension ContainerTests {
    static let usbguardConfig = """
        [[agent]]
        name = "usbguard"
        runner = "systemd"
        unit = "usbguard.service"
        content_link = "/etc/usbguard/rules.d"
        ready_check_exec = ["/usr/bin/usbguard", "list-rules"]
        failure_window_sec = 60
        restart_delay_ms = 100
        boot_good_after_sec = 2
        """

    /// The README's drop-in: Debian's command line with `-P`, since the store's files are
    /// mode 0444 and usbguard-daemon refuses rule files that others may read.
    static let usbguardDropIn = """
        [Service]
        ExecStart=
        ExecStart=/usr/sbin/usbguard-daemon -f -s -P -c /etc/usbguard/usbguard-daemon.conf
        """

    /// What Debian's usbguard package leaves at installation, which a volatile container's
    /// empty /etc and /var lack: an empty `RuleFile=` (/etc/usbguard/rules.conf), the IPC
    /// access control directory and the audit log directory; the README's drop-in; and the
    /// unit disabled, as the recipe says. usbguard-daemon.conf comes in
    /// ``usbguardSetUp(_:)`` (mode 0600 as Debian ships it, which a bound file cannot have).
    static let usbguardFiles = [
        "/etc/tmpfiles.d/usbguard.conf": """
            d /etc/usbguard 0755 root root -
            f /etc/usbguard/rules.conf 0600 root root -
            d /etc/usbguard/IPCAccessControl.d 0755 root root -
            d /var/log/usbguard 0755 root root -

            """,
        "/etc/systemd/system/usbguard.service.d/backstop.conf": usbguardDropIn,
        "/etc/systemd/system-preset/00-backstop-test.preset": "disable usbguard.service\n",
    ]

    /// This machine's usbguard-daemon.conf (Debian's) in the container, mode 0600, and rule
    /// sets: /srv/rules-v1 allows the root hubs and a keyboard; /srv/rules-v2 adds a rule
    /// with its closing brace missing, which usbguard cannot parse.
    func usbguardSetUp(_ container: Container) throws {
        let daemonConfig = try String(contentsOfFile: "/etc/usbguard/usbguard-daemon.conf", encoding: .utf8)
        // This machine has no USB bus: usbguard's uevent backend reads /sys/bus/usb/devices at
        // start and exits 1 without it. An empty one stands for a host with nothing plugged in.
        try #require(try container.run("/bin/sh", "-c", """
            mount -t tmpfs -o mode=0755 tmpfs /sys/bus && mkdir -p /sys/bus/usb/devices
            (umask 077 && cat > /etc/usbguard/usbguard-daemon.conf) <<'USBGUARD_DAEMON_CONF'
            \(daemonConfig)USBGUARD_DAEMON_CONF
            mkdir -p /srv/rules-v1 /srv/rules-v2
            cat > /srv/rules-v1/50-hubs.conf <<'EOF'
            allow id 1d6b:0002 with-interface equals { 09:00:00 }
            allow id 1d6b:0003 with-interface equals { 09:00:00 }
            EOF
            echo 'allow id 046d:c31c name "USB Keyboard" with-interface one-of { 03:01:01 03:00:00 }' > /srv/rules-v1/60-keyboard.conf
            cp /srv/rules-v1/* /srv/rules-v2/
            echo 'allow id 046d:c52b name "USB Receiver" with-interface equals { 03:01:01 03:01:02' > /srv/rules-v2/70-receiver.conf
            """).status == 0)
    }

    /// `usbguard list-rules` (usbguard's own client, over its IPC) inside the container.
    func usbguardListRules(_ container: Container) throws -> [String] {
        let result = try container.run("/usr/bin/usbguard", "list-rules")
        try #require(result.status == 0, "usbguard list-rules: \(result.error)")
        return result.output.split(separator: "\n").map(String.init)
    }

    static let usbguardRulesOfV1 = [
        "1: allow id 1d6b:0002 with-interface 09:00:00",
        "2: allow id 1d6b:0003 with-interface 09:00:00",
        #"3: allow id 046d:c31c name "USB Keyboard" with-interface one-of { 03:01:01 03:00:00 }"#,
    ]

    @Test("usbguard.service (Type=forking) under the systemd runner: its rules are the content, a rule that does not parse is rolled back and usbguard enforces the known-good rules")
    func usbguardRulesRolledBack() throws {
        try withContainer(
            config: Self.usbguardConfig, files: Self.usbguardFiles, masked: Container.masked.filter { $0 != "usbguard.service" }
        ) { container in
            try usbguardSetUp(container)
            // A content_link under /etc is one backstopd's shipped unit can make: no warning.
            let check = try container.run("/usr/sbin/backstopd", "--check-config")
            #expect(check.status == 0 && check.output == "/etc/backstop/backstop.toml: OK (1 agent)\n", "\(check.output) \(check.error)")
            // The README's advice: nobody but root reads the rules in the store.
            try #require(try container.run("/bin/chmod", "0700", "/var/lib/backstop/usbguard").status == 0)

            try #require(try container.run("/usr/bin/backstopctl", "stage", "usbguard", "/srv/rules-v1", "--version", "v1", "--activate").status == 0)
            try container.waitForDecision("agent-ready", version: "v1")
            #expect(try usbguardListRules(container) == Self.usbguardRulesOfV1)
            let unreadable = try container.run("/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/cat", "/etc/usbguard/rules.d/60-keyboard.conf")
            #expect(unreadable.status != 0 && unreadable.error.contains("Permission denied"), "\(unreadable.output) \(unreadable.error)")
            try #require(try container.run("/usr/bin/backstopctl", "promote", "usbguard", "v1").status == 0)

            try #require(try container.run("/usr/bin/backstopctl", "stage", "usbguard", "/srv/rules-v2", "--version", "v2", "--activate").status == 0)
            let agent = try expectRolledBack(container)
            #expect(agent.content.knownGood == "v1")
            #expect(!(try container.decisions()).contains { $0["BACKSTOP_EVENT"] == "agent-ready" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" })
            // Each failed start is the forking start process exiting 1 on the rule it cannot parse.
            let exits = try container.decisions().filter { $0["BACKSTOP_EVENT"] == "agent-exited" && $0["BACKSTOP_CONTENT_VERSION"] == "v2" }
            #expect(exits.count == 3)
            #expect(exits.allSatisfy { $0["BACKSTOP_REASON"] == "exited" && $0["BACKSTOP_EXIT_STATUS"] == "1" }, "\(exits)")
            let log = try container.run("/bin/journalctl", "-u", "usbguard.service", "--no-pager").output
            #expect(log.contains("parse error"), "usbguard says why it refused the rules:\n\(log)")

            let shown = try container.run("/bin/systemctl", "show", "usbguard.service", "-p", "ActiveState", "-p", "MainPID").output
            #expect(shown.contains("ActiveState=active"))
            #expect(shown.contains("MainPID=\(agent.pid ?? -1)"))
            #expect(try usbguardListRules(container) == Self.usbguardRulesOfV1)

            // A permanent change through usbguard's IPC cannot be saved into a version.
            let append = try container.run("/usr/bin/usbguard", "append-rule", "block id 1234:5678")
            #expect(append.status != 0)
            #expect((append.output + append.error).contains("Read-only file system"), "\(append.output) \(append.error)")
        }
    }
}
