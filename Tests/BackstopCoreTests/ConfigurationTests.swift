import Foundation
import Testing
@testable import BackstopCore

@Suite("Configuration: parsing and validation")
struct ConfigurationTests {
    static let path = "/etc/backstop/test.toml"

    /// Parses `source` and returns the error it must raise.
    func error(in source: String) throws -> ConfigurationError {
        do {
            let configuration = try Configuration.parse(source, path: Self.path)
            Issue.record("expected an error, parsed \(configuration)")
            throw CancellationError()
        } catch let error as ConfigurationError {
            return error
        }
    }

    /// A minimal valid agent table, for the errors below to add one fault to.
    static let minimalAgent = """
        [[agent]]
        name = "demo"
        exec = ["/usr/bin/demo"]
        """

    @Test("a file with every key: each value is parsed")
    func fullFile() throws {
        let source = """
            # Backstop configuration used by the unit tests
            [daemon]
            state_directory = "/srv/backstop/state"
            runtime_directory = "/run/backstop-test"

            [[agent]]
            name = "clamd_01-x"
            exec = ["/usr/sbin/clamd", "--foreground", "--config={content}/clamd.conf"]
            runner = "direct"
            notify = true
            content_link = "/var/lib/clamav/current"
            failure_threshold = 5
            failure_window_sec = 300
            probation_sec = 900
            restart_delay_ms = 250
            restart_delay_max_sec = 45
            start_timeout_sec = 60
            watchdog_sec = 15
            boot_good_after_sec = 180
            boot_failure_threshold = 4
            safe_mode_exec = ["/usr/sbin/clamd", "--foreground", "--no-signatures"]
            preflight_sec = 20
            max_bundle_bytes = 104857600
            max_files = 5000
            require_signature = true
            trusted_keys = "/etc/backstop/clamav-keys/"
            keep_versions = 2
            environment = ["CLAMD_MODE=strict", "TZ=UTC", "CLAMD_MODE=audit", "EMPTY=", "EQUALS=a=b"]
            success_exit_status = [143, "SIGTERM", 0]
            clean_exit = "normal"

            [[agent]]
            name = "osquery"
            exec = ["/opt/osquery/bin/osqueryd", "{content}"]
            """
        let configuration = try Configuration.parse(source, path: Self.path)
        #expect(configuration.path == Self.path)
        #expect(configuration.daemon.stateDirectory == "/srv/backstop/state")
        #expect(configuration.daemon.runtimeDirectory == "/run/backstop-test")
        #expect(configuration.daemon.controlSocketPath == "/run/backstop-test/io.backstop.Manager")
        #expect(configuration.agents.map(\.name) == ["clamd_01-x", "osquery"])

        let agent = try #require(configuration.agent(named: "clamd_01-x"))
        #expect(agent.exec == ["/usr/sbin/clamd", "--foreground", "--config={content}/clamd.conf"])
        #expect(agent.runner == .direct)
        #expect(agent.unit == nil)
        #expect(agent.notify == true)
        #expect(agent.contentLink == "/var/lib/clamav/current")
        #expect(agent.failureThreshold == 5)
        #expect(agent.failureWindowSeconds == 300)
        #expect(agent.probationSeconds == 900)
        #expect(agent.restartDelayMilliseconds == 250)
        #expect(agent.restartDelayMaxSeconds == 45)
        #expect(agent.startTimeoutSeconds == 60)
        #expect(agent.watchdogSeconds == 15)
        #expect(agent.bootGoodAfterSeconds == 180)
        #expect(agent.bootFailureThreshold == 4)
        #expect(agent.safeModeExec == ["/usr/sbin/clamd", "--foreground", "--no-signatures"])
        #expect(agent.preflightSeconds == 20)
        #expect(agent.stagingRules.maxBundleBytes == 104_857_600)
        #expect(agent.stagingRules.maxFiles == 5000)
        #expect(agent.stagingRules.requireSignature)
        #expect(agent.stagingRules.trustedKeysDirectory == "/etc/backstop/clamav-keys")
        #expect(agent.keepVersions == 2)
        #expect(agent.successExitStatus == SuccessExitStatus(codes: [143, 0], signals: [SIGTERM]))
        #expect(agent.cleanExit == .normal)
        #expect(configuration.agent(named: "osquery")?.cleanExit == .backoff, "the default")
        #expect(agent.environment == ["CLAMD_MODE": "audit", "TZ": "UTC", "EMPTY": "", "EQUALS": "a=b"], "a later assignment replaces an earlier one")

        #expect(agent.policySettings == PolicySettings(
            agent: "clamd_01-x", failureThreshold: 5, failureWindowSeconds: 300, probationSeconds: 900,
            restartDelayMilliseconds: 250, restartDelayMaxSeconds: 45, startTimeoutSeconds: 60,
            watchdogSeconds: 15, notify: true, hasSafeModeExec: true, successExitStatus: SuccessExitStatus(codes: [143, 0], signals: [SIGTERM]),
            cleanExit: .normal))
    }

    @Test("omitted keys take the defaults of SPEC.md")
    func defaults() throws {
        let configuration = try Configuration.parse(Self.minimalAgent, path: Self.path)
        #expect(configuration.daemon.stateDirectory == "/var/lib/backstop")
        #expect(configuration.daemon.runtimeDirectory == "/run/backstop")
        let agent = try #require(configuration.agents.first)
        #expect(configuration.agents.count == 1)
        #expect(agent.name == "demo")
        #expect(agent.exec == ["/usr/bin/demo"])
        #expect(agent.runner == .direct)
        #expect(agent.unit == nil)
        #expect(agent.notify == false)
        #expect(agent.contentLink == nil)
        #expect(agent.stagingRules == StagingRules())
        #expect(agent.stagingRules.trustedKeysDirectory == "/etc/backstop/keys")
        #expect(agent.keepVersions == 5)
        #expect(agent.failureThreshold == 3)
        #expect(agent.failureWindowSeconds == 120)
        #expect(agent.probationSeconds == 600)
        #expect(agent.restartDelayMilliseconds == 100)
        #expect(agent.restartDelayMaxSeconds == 30)
        #expect(agent.startTimeoutSeconds == 90)
        #expect(agent.watchdogSeconds == 0)
        #expect(agent.bootGoodAfterSeconds == 120)
        #expect(agent.bootFailureThreshold == 2)
        #expect(agent.safeModeExec.isEmpty)
        #expect(agent.preflightSeconds == 0)
        #expect(agent.policySettings == PolicySettings(agent: "demo"))
    }

    @Test("an empty file is valid: daemon defaults, no agents; content_link = \"\" means unset")
    func emptyFileAndEmptyContentLink() throws {
        let empty = try Configuration.parse("", path: Self.path)
        #expect(empty.daemon == DaemonConfiguration())
        #expect(empty.agents.isEmpty)

        let unset = try Configuration.parse(Self.minimalAgent + "\ncontent_link = \"\"\n", path: Self.path)
        #expect(unset.agents.first?.contentLink == nil)
    }

    @Test("load(path:) reads a file from disk and names it in errors")
    func loadFromDisk() throws {
        let directory = try makeTemporaryDirectory()
        defer { ContentStore.removeTree(directory) }
        let file = directory + "/backstop.toml"
        try write(Self.minimalAgent + "\nfailure_threshold = 0\n", to: file)
        #expect(throws: ConfigurationError.self) { try Configuration.load(path: file) }
        do {
            _ = try Configuration.load(path: file)
        } catch {
            #expect(error.description.hasPrefix("\(file):4: agent[0].failure_threshold: "))
        }
        let missing = directory + "/absent.toml"
        do {
            _ = try Configuration.load(path: missing)
            Issue.record("a missing file must be an error")
        } catch {
            #expect(error.path == missing)
            #expect(error.description == missing + ": does not exist")
        }
        // A FIFO would block the reader; a symlink loop is not a missing file.
        let fifo = directory + "/fifo.toml"
        try #require(mkfifo(fifo, 0o600) == 0)
        #expect(throws: ConfigurationError(path: fifo, line: nil, key: nil, message: "is not a regular file")) { try Configuration.load(path: fifo) }
        let loop = directory + "/loop.toml"
        try #require(symlink(loop, loop) == 0)
        #expect(throws: ConfigurationError(path: loop, line: nil, key: nil, message: String(cString: strerror(ELOOP)))) { try Configuration.load(path: loop) }
    }

    /// One fault per case: the source, the line and key the error must name, and a word of its message.
    struct Fault: Sendable, CustomTestStringConvertible {
        var what: String
        var source: String
        var line: Int
        var key: String
        var message: String
        var testDescription: String { what }
    }

    static let faults: [Fault] = [
        Fault(
            what: "a program named without a path",
            source: "[[agent]]\nname = \"demo\"\nexec = [\"sh\", \"-c\", \"true\"]\n",
            line: 3, key: "agent[0].exec", message: "must name its program by an absolute path, or one in the content ({content}/...), not \"sh\" (here: "),
        Fault(
            what: "the state directory at /",
            source: "[daemon]\nstate_directory = \"/\"\n" + minimalAgent,
            line: 2, key: "daemon.state_directory", message: "must not be /"),
        Fault(
            what: "the runtime directory inside the state directory",
            source: "[daemon]\nstate_directory = \"/var/lib/b\"\nruntime_directory = \"/var/lib/b/run\"\n" + minimalAgent,
            line: 3, key: "daemon.runtime_directory", message: "must not be the same or one inside the other"),
        Fault(
            what: "a clean_exit that is neither backoff nor normal",
            source: minimalAgent + "\nclean_exit = \"always\"\n",
            line: 4, key: "agent[0].clean_exit", message: "must be \"backoff\" or \"normal\", not \"always\""),
        Fault(
            what: "clean_exit = normal with clean_exit_is_failure",
            source: minimalAgent + "\nclean_exit_is_failure = true\nclean_exit = \"normal\"\n",
            line: 5, key: "agent[0].clean_exit", message: "contradicts clean_exit_is_failure = true"),
        Fault(
            what: "a success exit status out of range",
            source: minimalAgent + "\nsuccess_exit_status = [256]\n",
            line: 4, key: "agent[0].success_exit_status", message: "exit code 256 is not between 0 and 255"),
        Fault(
            what: "a success exit status that names no signal",
            source: minimalAgent + "\nsuccess_exit_status = [\"TERM\"]\n",
            line: 4, key: "agent[0].success_exit_status", message: "\"TERM\" is not a signal name"),
        Fault(
            what: "an environment entry without =",
            source: minimalAgent + "\nenvironment = [\"A=1\", \"TZ\"]\n",
            line: 4, key: "agent[0].environment", message: "\"TZ\" is not of the form \"KEY=value\""),
        Fault(
            what: "an environment entry whose name is not a variable name",
            source: minimalAgent + "\nenvironment = [\"1X=1\"]\n",
            line: 4, key: "agent[0].environment", message: "\"1X\" is not a variable name"),
        Fault(
            what: "an environment entry that sets Backstop's own variable",
            source: minimalAgent + "\nenvironment = [\"WATCHDOG_PID=1\"]\n",
            line: 4, key: "agent[0].environment", message: "WATCHDOG_PID is set by Backstop itself"),
        Fault(
            what: "an environment entry the sandbox's shell would read",
            source: minimalAgent + "\nenvironment = [\"BASH_ENV=/tmp/x\"]\n",
            line: 4, key: "agent[0].environment", message: "BASH_ENV is read or set by the sandbox's shell"),
        Fault(
            what: "an environment entry longer than the kernel passes",
            source: minimalAgent + "\nenvironment = [\"BIG=\(String(repeating: "x", count: 131_072))\"]\n",
            line: 4, key: "agent[0].environment", message: "the kernel passes at most 131071"),
        Fault(
            what: "an environment entry in BACKSTOP_*",
            source: minimalAgent + "\nenvironment = [\"BACKSTOP_CONTENT=/srv\"]\n",
            line: 4, key: "agent[0].environment", message: "BACKSTOP_CONTENT is set by Backstop itself"),
        Fault(
            what: "unknown top-level key",
            source: "verbose = true\n" + minimalAgent,
            line: 1, key: "verbose", message: "unknown key"),
        Fault(
            what: "unknown key in [daemon]",
            source: "[daemon]\nstate_directory = \"/var/lib/b\"\nlog_level = \"debug\"\n" + minimalAgent,
            line: 3, key: "daemon.log_level", message: "unknown key in [daemon]"),
        Fault(
            what: "unknown key in [[agent]]",
            source: minimalAgent + "\nrestart_delay = 5\n",
            line: 4, key: "agent[0].restart_delay", message: "unknown key in [[agent]]"),
        Fault(
            what: "a misspelt key in [[agent]], with the key it likely means",
            source: minimalAgent + "\nfailure_treshold = 3\n",
            line: 4, key: "agent[0].failure_treshold", message: "unknown key in [[agent]]; did you mean \"failure_threshold\"?"),
        Fault(
            what: "the first of two unknown keys in the file is the one named",
            source: minimalAgent + "\nzzz_first = 1\naaa_second = 2\n",
            line: 4, key: "agent[0].zzz_first", message: "unknown key in [[agent]]"),
        Fault(
            what: "a sandbox key in [[agent]]",
            source: minimalAgent + "\nuser = \"clamav\"\n",
            line: 4, key: "agent[0].user", message: "belongs in the agent's [agent.sandbox] table"),
        Fault(
            what: "an [[agent]] key after [agent.sandbox]",
            source: minimalAgent + "\n[agent.sandbox]\nuser = \"clamav\"\nready_check_exec = [\"/bin/true\"]\n",
            line: 6, key: "agent[0].sandbox.ready_check_exec", message: "belongs in [[agent]], above its [agent.sandbox] table"),
        Fault(
            what: "unknown key in the second [[agent]]",
            source: minimalAgent + "\n\n[[agent]]\nname = \"two\"\nexec = [\"/bin/two\"]\nprobation = 5\n",
            line: 8, key: "agent[1].probation", message: "unknown key in [[agent]]"),
        Fault(
            what: "string where an integer belongs",
            source: minimalAgent + "\nfailure_threshold = \"3\"\n",
            line: 4, key: "agent[0].failure_threshold", message: "must be an integer, not a string"),
        Fault(
            what: "float where an integer belongs",
            source: minimalAgent + "\nprobation_sec = 1.5\n",
            line: 4, key: "agent[0].probation_sec", message: "must be an integer"),
        Fault(
            what: "string where a boolean belongs",
            source: minimalAgent + "\nnotify = \"yes\"\n",
            line: 4, key: "agent[0].notify", message: "must be true or false, not a string"),
        Fault(
            what: "string where an array belongs",
            source: "[[agent]]\nname = \"demo\"\nexec = \"/usr/bin/demo --content {content}\"\n",
            line: 3, key: "agent[0].exec", message: "must be an array of strings, not a string"),
        Fault(
            what: "an array holding a number",
            source: "[[agent]]\nname = \"demo\"\nexec = [\"/usr/bin/demo\", 5]\n",
            line: 3, key: "agent[0].exec", message: "must be an array of strings; found an integer"),
        Fault(
            what: "integer where a path belongs",
            source: "[daemon]\nruntime_directory = 7\n",
            line: 2, key: "daemon.runtime_directory", message: "must be a string, not an integer"),
        Fault(
            what: "relative state_directory",
            source: "[daemon]\nstate_directory = \"var/lib/backstop\"\n",
            line: 2, key: "daemon.state_directory", message: "must be an absolute path"),
        Fault(
            what: "duplicate agent name",
            source: minimalAgent + "\n\n[[agent]]\nname = \"demo\"\nexec = [\"/bin/other\"]\n",
            line: 6, key: "agent[1].name", message: "duplicate agent name \"demo\""),
        Fault(
            what: "agent name with capitals and punctuation",
            source: "[[agent]]\nname = \"Demo!\"\nexec = [\"/usr/bin/demo\"]\n",
            line: 2, key: "agent[0].name", message: "not a valid agent name"),
        Fault(
            what: "empty agent name",
            source: "[[agent]]\nname = \"\"\nexec = [\"/usr/bin/demo\"]\n",
            line: 2, key: "agent[0].name", message: "not a valid agent name"),
        Fault(
            what: "agent name with a slash",
            source: "[[agent]]\nname = \"../etc\"\nexec = [\"/usr/bin/demo\"]\n",
            line: 2, key: "agent[0].name", message: "not a valid agent name"),
        Fault(
            what: "missing exec (line of the [[agent]] header)",
            source: "[daemon]\n\n[[agent]]\nname = \"demo\"\nnotify = true\n",
            line: 3, key: "agent[0]", message: "missing key \"exec\""),
        Fault(
            what: "missing name",
            source: "[[agent]]\nexec = [\"/usr/bin/demo\"]\n",
            line: 1, key: "agent[0]", message: "missing key \"name\""),
        Fault(
            what: "empty exec",
            source: "[[agent]]\nname = \"demo\"\nexec = []\n",
            line: 3, key: "agent[0].exec", message: "must name a program"),
        Fault(
            what: "exec with an empty program",
            source: "[[agent]]\nname = \"demo\"\nexec = [\"\", \"--flag\"]\n",
            line: 3, key: "agent[0].exec", message: "must name a program"),
        Fault(
            what: "zero failure_threshold",
            source: minimalAgent + "\nfailure_threshold = 0\n",
            line: 4, key: "agent[0].failure_threshold", message: "must be greater than zero, not 0"),
        Fault(
            what: "zero failure_window_sec",
            source: minimalAgent + "\nfailure_window_sec = 0\n",
            line: 4, key: "agent[0].failure_window_sec", message: "must be greater than zero, not 0"),
        Fault(
            what: "negative probation_sec",
            source: minimalAgent + "\nprobation_sec = -600\n",
            line: 4, key: "agent[0].probation_sec", message: "must be greater than zero, not -600"),
        Fault(
            what: "zero start_timeout_sec",
            source: minimalAgent + "\nstart_timeout_sec = 0\n",
            line: 4, key: "agent[0].start_timeout_sec", message: "must be greater than zero, not 0"),
        Fault(
            what: "zero boot_good_after_sec",
            source: minimalAgent + "\nboot_good_after_sec = 0\n",
            line: 4, key: "agent[0].boot_good_after_sec", message: "must be greater than zero, not 0"),
        Fault(
            what: "negative restart_delay_ms",
            source: minimalAgent + "\nrestart_delay_ms = -1\n",
            line: 4, key: "agent[0].restart_delay_ms", message: "must not be negative, not -1"),
        Fault(
            what: "negative restart_delay_max_sec",
            source: minimalAgent + "\nrestart_delay_max_sec = -30\n",
            line: 4, key: "agent[0].restart_delay_max_sec", message: "must not be negative, not -30"),
        Fault(
            what: "negative watchdog_sec",
            source: minimalAgent + "\nnotify = true\nwatchdog_sec = -5\n",
            line: 5, key: "agent[0].watchdog_sec", message: "must not be negative, not -5"),
        Fault(
            what: "negative preflight_sec",
            source: minimalAgent + "\npreflight_sec = -1\n",
            line: 4, key: "agent[0].preflight_sec", message: "must not be negative, not -1"),
        Fault(
            what: "watchdog_sec without notify",
            source: minimalAgent + "\nwatchdog_sec = 10\n",
            line: 4, key: "agent[0].watchdog_sec", message: "needs notify = true"),
        Fault(
            what: "unknown runner",
            source: minimalAgent + "\nrunner = \"docker\"\n",
            line: 4, key: "agent[0].runner", message: "must be \"direct\" or \"systemd\", not \"docker\""),
        Fault(
            what: "relative content_link",
            source: minimalAgent + "\ncontent_link = \"current\"\n",
            line: 4, key: "agent[0].content_link", message: "must be an absolute path"),
        Fault(
            what: "runner systemd without unit",
            source: "[[agent]]\nname = \"av\"\nrunner = \"systemd\"\ncontent_link = \"/var/lib/av\"\n",
            line: 1, key: "agent[0]", message: "missing key \"unit\""),
        Fault(
            what: "runner systemd with a unit that is not a service",
            source: "[[agent]]\nname = \"av\"\nrunner = \"systemd\"\nunit = \"av.socket\"\ncontent_link = \"/var/lib/av\"\n",
            line: 4, key: "agent[0].unit", message: "must name a service unit"),
        Fault(
            what: "runner systemd without content_link",
            source: "[[agent]]\nname = \"av\"\nrunner = \"systemd\"\nunit = \"av.service\"\n",
            line: 1, key: "agent[0]", message: "missing key \"content_link\""),
        Fault(
            what: "runner systemd with exec",
            source: "[[agent]]\nname = \"av\"\nrunner = \"systemd\"\nunit = \"av.service\"\ncontent_link = \"/var/lib/av\"\nexec = [\"/x\"]\n",
            line: 6, key: "agent[0].exec", message: "not used with runner = \"systemd\""),
        Fault(
            what: "unit without runner systemd",
            source: minimalAgent + "\nunit = \"demo.service\"\n",
            line: 4, key: "agent[0].unit", message: "only meaningful with runner = \"systemd\""),
        Fault(
            what: "runner systemd with a template unit",
            source: "[[agent]]\nname = \"av\"\nrunner = \"systemd\"\nunit = \"av@.service\"\ncontent_link = \"/var/lib/av\"\n",
            line: 4, key: "agent[0].unit", message: "av@.service is a template"),
        Fault(
            what: "runner systemd with backstopd's own unit",
            source: "[[agent]]\nname = \"av\"\nrunner = \"systemd\"\nunit = \"backstopd.service\"\ncontent_link = \"/var/lib/av\"\n",
            line: 4, key: "agent[0].unit", message: "is Backstop itself"),
        Fault(
            what: "two agents with one unit",
            source: "[[agent]]\nname = \"a\"\nrunner = \"systemd\"\nunit = \"av.service\"\ncontent_link = \"/var/lib/a\"\n"
                + "[[agent]]\nname = \"b\"\nrunner = \"systemd\"\nunit = \"av.service\"\ncontent_link = \"/var/lib/b\"\n",
            line: 9, key: "agent[1].unit", message: "already agent \"a\"'s unit"),
        Fault(
            what: "content_link above state_directory",
            source: minimalAgent + "\ncontent_link = \"/var/lib/\"\n",
            line: 4, key: "agent[0].content_link", message: "/var/lib holds state_directory"),
        Fault(
            what: "content_link at the root",
            source: minimalAgent + "\ncontent_link = \"/\"\n",
            line: 4, key: "agent[0].content_link", message: "/ holds state_directory"),
        Fault(
            what: "content_link at a system directory",
            source: minimalAgent + "\ncontent_link = \"/etc\"\n",
            line: 4, key: "agent[0].content_link", message: "/etc is a system directory"),
        Fault(
            what: "content_link that is a system directory once resolved lexically",
            source: minimalAgent + "\ncontent_link = \"/srv/../var/./log\"\n",
            line: 4, key: "agent[0].content_link", message: "/var/log is a system directory"),
        Fault(
            what: "content_link inside a state_directory written with a trailing slash",
            source: "[daemon]\nstate_directory = \"/srv/state/\"\n" + minimalAgent + "\ncontent_link = \"/srv/state/demo\"\n",
            line: 6, key: "agent[0].content_link", message: "must not be inside state_directory (/srv/state)"),
        Fault(
            what: "two agents with nested content_links",
            source: minimalAgent + "\ncontent_link = \"/srv/rules\"\n[[agent]]\nname = \"b\"\nexec = [\"/usr/bin/b\"]\ncontent_link = \"/srv/rules/b\"\n",
            line: 8, key: "agent[1].content_link", message: "are nested"),
        Fault(
            what: "two agents with one content_link",
            source: minimalAgent + "\ncontent_link = \"/srv/rules\"\n[[agent]]\nname = \"b\"\nexec = [\"/usr/bin/b\"]\ncontent_link = \"/srv/rules/\"\n",
            line: 8, key: "agent[1].content_link", message: "already agent \"demo\"'s content_link"),
        Fault(
            what: "safe_mode_exec with an empty program",
            source: minimalAgent + "\nsafe_mode_exec = [\"\"]\n",
            line: 4, key: "agent[0].safe_mode_exec", message: "must not be empty"),
        Fault(
            what: "max_files of 0",
            source: minimalAgent + "\nmax_files = 0\n",
            line: 4, key: "agent[0].max_files", message: "greater than zero"),
        Fault(
            what: "max_bundle_bytes as a string",
            source: minimalAgent + "\nmax_bundle_bytes = \"1G\"\n",
            line: 4, key: "agent[0].max_bundle_bytes", message: "integer"),
        Fault(
            what: "require_signature as a string",
            source: minimalAgent + "\nrequire_signature = \"yes\"\n",
            line: 4, key: "agent[0].require_signature", message: "true or false"),
        Fault(
            what: "trusted_keys relative",
            source: minimalAgent + "\ntrusted_keys = \"keys\"\n",
            line: 4, key: "agent[0].trusted_keys", message: "absolute path"),
        Fault(
            what: "keep_versions of 0",
            source: minimalAgent + "\nkeep_versions = 0\n",
            line: 4, key: "agent[0].keep_versions", message: "greater than zero"),
        Fault(
            what: "sandbox not a table",
            source: minimalAgent + "\nsandbox = true\n",
            line: 4, key: "agent[0].sandbox", message: "must be a table"),
        Fault(
            what: "unknown sandbox key",
            source: minimalAgent + "\n[agent.sandbox]\nprivate_devices = true\n",
            line: 5, key: "agent[0].sandbox.private_devices", message: "unknown key in [agent.sandbox]"),
        Fault(
            what: "sandbox user malformed",
            source: minimalAgent + "\n[agent.sandbox]\nuser = \"Root Admin\"\n",
            line: 5, key: "agent[0].sandbox.user", message: "not a user name or number"),
        Fault(
            what: "unknown capability",
            source: minimalAgent + "\n[agent.sandbox]\ncapabilities = [\"CAP_NET_ADMIN\", \"CAP_TELEPORT\"]\n",
            line: 5, key: "agent[0].sandbox.capabilities", message: "\"CAP_TELEPORT\" is not a capability"),
        Fault(
            what: "relative read_write_paths",
            source: minimalAgent + "\n[agent.sandbox]\nread_write_paths = [\"/var/lib/agent\", \"cache\"]\n",
            line: 5, key: "agent[0].sandbox.read_write_paths", message: "\"cache\" is not an absolute path"),
        Fault(
            what: "dot-dot in inaccessible_paths",
            source: minimalAgent + "\n[agent.sandbox]\ninaccessible_paths = [\"/var/../etc\"]\n",
            line: 5, key: "agent[0].sandbox.inaccessible_paths", message: "has . or .. in it"),
        Fault(
            what: "a newline in a path",
            source: minimalAgent + "\n[agent.sandbox]\nread_only_paths = [\"/etc\\n/evil\"]\n",
            line: 5, key: "agent[0].sandbox.read_only_paths", message: "has a control character in it"),
        Fault(
            what: "memory_max without a unit it knows",
            source: minimalAgent + "\n[agent.sandbox]\nmemory_max = \"512MB\"\n",
            line: 5, key: "agent[0].sandbox.memory_max", message: "is not a memory size"),
        Fault(
            what: "memory_max too small",
            source: minimalAgent + "\n[agent.sandbox]\nmemory_max = 4096\n",
            line: 5, key: "agent[0].sandbox.memory_max", message: "too little"),
        Fault(
            what: "tmp_size that is not a size",
            source: minimalAgent + "\n[agent.sandbox]\ntmp_size = \"lots\"\n",
            line: 5, key: "agent[0].sandbox.tmp_size", message: "\"lots\" is not a size"),
        Fault(
            what: "cpu_quota without %",
            source: minimalAgent + "\n[agent.sandbox]\ncpu_quota = \"0.5\"\n",
            line: 5, key: "agent[0].sandbox.cpu_quota", message: "is not a CPU quota"),
        Fault(
            what: "tasks_max of 0",
            source: minimalAgent + "\n[agent.sandbox]\ntasks_max = 0\n",
            line: 5, key: "agent[0].sandbox.tasks_max", message: "greater than zero"),
        Fault(
            what: "unknown system call group",
            source: minimalAgent + "\n[agent.sandbox]\nsystem_call_filter = [\"@system-service\", \"~@everything\"]\n",
            line: 5, key: "agent[0].sandbox.system_call_filter", message: "\"@everything\" is not one of systemd's system call groups"),
        Fault(
            what: "unknown sandbox engine",
            source: minimalAgent + "\n[agent.sandbox]\nengine = \"docker\"\n",
            line: 5, key: "agent[0].sandbox.engine", message: "must be \"bubblewrap\" or \"systemd\""),
        Fault(
            what: "sandbox user -1, which setresuid takes for unchanged",
            source: minimalAgent + "\n[agent.sandbox]\nuser = \"4294967295\"\n",
            line: 5, key: "agent[0].sandbox.user", message: "4294967295 is not a valid user id"),
        Fault(
            what: "sandbox group 65535",
            source: minimalAgent + "\n[agent.sandbox]\ngroup = 65535\n",
            line: 5, key: "agent[0].sandbox.group", message: "65535 is not a valid group id"),
        Fault(
            what: "writable path below a default inaccessible path",
            source: minimalAgent + "\n[agent.sandbox]\nread_write_paths = [\"/var/lib/agent\", \"/home/agent/cache\"]\n",
            line: 5, key: "agent[0].sandbox.read_write_paths",
            message: "\"/home/agent/cache\" lies in inaccessible path \"/home\" (one of the default inaccessible_paths; set inaccessible_paths to leave it out), which hides it"),
        Fault(
            what: "read-only path that an inaccessible path hides",
            source: minimalAgent + "\n[agent.sandbox]\ninaccessible_paths = [\"/srv\"]\nread_only_paths = [\"/\", \"/srv\"]\n",
            line: 6, key: "agent[0].sandbox.read_only_paths", message: "\"/srv\" lies in inaccessible path \"/srv\", which hides it"),
        Fault(
            what: "systemd engine with a program found in PATH",
            source: "[[agent]]\nname = \"demo\"\nexec = [\"demo-agent\"]\n[agent.sandbox]\nengine = \"systemd\"\n",
            line: 3, key: "agent[0].exec", message: "absolute path with engine = \"systemd\""),
        Fault(
            what: "systemd engine for a unit agent",
            source: "[[agent]]\nname = \"clamd\"\nrunner = \"systemd\"\nunit = \"clamav-daemon.service\"\ncontent_link = \"/var/lib/clamav\"\n[agent.sandbox]\nengine = \"systemd\"\n",
            line: 7, key: "agent[0].sandbox.engine", message: "only for runner = \"direct\""),
        Fault(
            what: "preflight with the systemd runner and no preflight_exec",
            source: "[[agent]]\nname = \"clamd\"\nrunner = \"systemd\"\nunit = \"clamav-daemon.service\"\ncontent_link = \"/var/lib/clamav\"\npreflight_sec = 30\n",
            line: 1, key: "agent[0].preflight_exec", message: "a preflight runs this command line"),
    ]

    @Test("[agent.sandbox]: defaults when absent; every key parsed; sizes, percentages and infinity")
    func sandboxTable() throws {
        #expect(try Configuration.parse(Self.minimalAgent, path: Self.path).agents[0].sandbox == SandboxSpec())
        let defaults = SandboxSpec()
        #expect(defaults.user == "nobody" && defaults.group == nil && defaults.capabilities.isEmpty && defaults.noNewPrivileges)
        #expect(defaults.readOnlyPaths == ["/"] && defaults.readWritePaths.isEmpty && defaults.privateTmp && defaults.privateNetwork)
        #expect(defaults.tasksMax == 512 && defaults.memoryMaxBytes == nil && defaults.systemCallFilter == ["@system-service"])
        let agent = try Configuration.parse(Self.minimalAgent + """

            preflight_sec = 20
            preflight_exec = ["/usr/bin/demo", "--check"]
            [agent.sandbox]
            user = "clamav"
            group = "4000"
            capabilities = ["net_admin", "CAP_SYS_PTRACE", "CAP_NET_ADMIN"]
            no_new_privileges = false
            read_only_paths = ["/usr", "/etc/"]
            read_write_paths = ["/var/lib/clamav"]
            inaccessible_paths = []
            private_tmp = false
            private_network = false
            memory_max = "1G"
            cpu_quota = "150%"
            tasks_max = "infinity"
            system_call_filter = ["@system-service", "~@privileged", "ptrace"]
            """, path: Self.path).agents[0]
        #expect(agent.preflightSeconds == 20 && agent.preflightExec == ["/usr/bin/demo", "--check"])
        var expected = SandboxSpec()
        expected.user = "clamav"
        expected.group = "4000"
        expected.capabilities = ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
        expected.noNewPrivileges = false
        expected.readOnlyPaths = ["/usr", "/etc"]
        expected.readWritePaths = ["/var/lib/clamav"]
        expected.inaccessiblePaths = []
        expected.privateTmp = false
        expected.privateNetwork = false
        expected.memoryMaxBytes = 1 << 30
        expected.cpuQuotaPercent = 150
        expected.tasksMax = nil
        expected.systemCallFilter = ["@system-service", "~@privileged", "ptrace"]
        #expect(agent.sandbox == expected)
        let transient = try Configuration.parse(Self.minimalAgent + "\n[agent.sandbox]\nengine = \"systemd\"\n", path: Self.path).agents[0]
        #expect(transient.transientUnit == "backstop-demo.service" && transient.watchedUnit == "backstop-demo.service")
        #expect(transient.policySettings.notify, "a transient unit is ready when it is active")
        #expect(try Configuration.parse(Self.minimalAgent + "\n[agent.sandbox]\nmemory_max = 268435456\n", path: Self.path).agents[0].sandbox.memoryMaxBytes == 256 << 20)
    }

    @Test("tmp_size bounds each private tmpfs; unset it is a quarter of memory_max, or 256M; with private_tmp = false it is a warning")
    func tmpSize() throws {
        func spec(_ lines: String) throws -> SandboxSpec {
            try Configuration.parse(Self.minimalAgent + "\n[agent.sandbox]\n" + lines, path: Self.path).agents[0].sandbox
        }
        #expect(try spec("tmp_size = \"64M\"\n").privateTmpSizeBytes == 64 << 20)
        #expect(try spec("tmp_size = 1048576\nmemory_max = \"1G\"\n").privateTmpSizeBytes == 1 << 20)
        #expect(try spec("memory_max = \"1G\"\n").privateTmpSizeBytes == 256 << 20)
        #expect(try spec("memory_max = \"2M\"\n").privateTmpSizeBytes == 1 << 20, "never below 1M")
        #expect(try spec("").privateTmpSizeBytes == 256 << 20)
        let configuration = try Configuration.parse(
            Self.minimalAgent + "\n[agent.sandbox]\nprivate_tmp = false\ntmp_size = \"64M\"\n", path: Self.path)
        #expect(configuration.warnings.contains { $0.contains("tmp_size (64M) has no effect with private_tmp = false") })
    }

    @Test("a content_link that already points into state_directory (as Backstop keeps it) is judged by the link, not its target")
    func contentLinkIntoStateDirectory() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory + "/state/demo/versions/v1", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: directory + "/rules", withDestinationPath: directory + "/state/demo/versions/v1")
        let configuration = try Configuration.parse(
            "[daemon]\nstate_directory = \"\(directory)/state\"\n" + Self.minimalAgent + "\ncontent_link = \"\(directory)/rules\"\n",
            path: Self.path)
        #expect(configuration.agents.first?.contentLink == directory + "/rules")
    }

    @Test("runner = \"systemd\" supervises a unit: no exec needed, ready means active")
    func systemdRunner() throws {
        let configuration = try Configuration.parse(
            "[[agent]]\nname = \"av\"\nrunner = \"systemd\"\nunit = \"clamav-daemon.service\"\ncontent_link = \"/var/lib/clamav\"\n",
            path: Self.path)
        let agent = try #require(configuration.agents.first)
        #expect(agent.runner == .systemd)
        #expect(agent.unit == "clamav-daemon.service")
        #expect(agent.exec.isEmpty)
        #expect(agent.policySettings.notify, "a unit is ready when systemd reports it active")
    }

    @Test("errors name the file, the line and the key", arguments: faults)
    func errorNamesFileLineAndKey(_ fault: Fault) throws {
        let error = try error(in: fault.source)
        #expect(error.path == Self.path)
        #expect(error.line == fault.line)
        #expect(error.key == fault.key)
        #expect(error.description.hasPrefix("\(Self.path):\(fault.line): \(fault.key): "), "\(error)")
        #expect(error.message.contains(fault.message), "\(error.message)")
    }

    @Test("a NUL byte (zero-filled blocks after a power cut) and invalid UTF-8 are refused with their line, not cut short")
    func damagedFile() throws {
        let nul = try error(in: Self.minimalAgent + "\n\0\0\0\0\n")
        #expect(nul.line == 4 && nul.key == nil && nul.message.contains("a NUL byte"), "\(nul)")
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("backstop-config-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var bytes = Array(Self.minimalAgent.utf8) + Array("\n# caf".utf8) + [0xE9] + Array("\n".utf8)
        try Data(bytes).write(to: URL(fileURLWithPath: scratch))
        #expect(throws: ConfigurationError(path: scratch, line: 4, key: nil, message: "TOML syntax: not valid UTF-8, which TOML requires")) {
            try Configuration.source(path: scratch)
        }
        bytes.removeLast(3)
        try Data(bytes).write(to: URL(fileURLWithPath: scratch))
        #expect(try Configuration.source(path: scratch).hasSuffix("# ca"))
    }

    @Test("a TOML syntax error carries the parser's line")
    func syntaxError() throws {
        let source = """
            [daemon]
            state_directory = "/var/lib/backstop"

            [[agent]]
            name = "demo
            exec = ["/usr/bin/demo"]
            """
        let error = try error(in: source)
        #expect(error.line == 5)
        #expect(error.key == nil)
        #expect(error.description.hasPrefix("\(Self.path):5: TOML syntax"), "\(error)")
    }

    @Test("a table header whose name starts with no key character is a syntax error with its line, not an abort of the parser")
    func tableHeaderThatAbortsTheParser() throws {
        for header in ["[$agent]", "[ .daemon]", "[[{agent}]]", "[\u{FFFD}]", "[[[agent]]]", "[", "[[ \r"] {
            let source = Self.minimalAgent + "\nexec_extra = [\n  [1, 2],\n  [{ a = 1 }],\n]\n" + header + "\n"
            let error = try error(in: source)
            #expect(error.line == 8, "\(header): \(error)")
            #expect(error.message.contains("a table header's name must start with"), "\(header): \(error)")
        }
    }

    @Test("a '}' where an array expects a value is a syntax error with its line, not an abort of the parser")
    func arrayBraceThatAbortsTheParser() throws {
        for value in ["[1, }", "[}]", "[[}]]", "[\n}]", "[1,\n# comment\n}]"] {
            let error = try error(in: Self.minimalAgent + "\nsafe_mode_exec = " + value + "\n")
            #expect(error.line == 4 + value.filter { $0 == "\n" }.count, "\(value): \(error)")
            #expect(error.message.contains("'}' where the array expects a value"), "\(value): \(error)")
        }
        // Braces in strings, inline tables in arrays and table headers after arrays are fine.
        let fine = Self.minimalAgent + "\nsafe_mode_exec = [\"/}\", \"{\", \"[x]\"]\n"
        #expect(try Configuration.parse(fine, path: Self.path).agents.first?.safeModeExec == ["/}", "{", "[x]"])
    }

    @Test("a TOML syntax error further down (a key without a value) carries its line")
    func syntaxErrorMissingValue() throws {
        let source = Self.minimalAgent + "\nnotify = true\nprobation_sec =\n"
        let error = try error(in: source)
        #expect(error.line == 5)
        #expect(error.description.hasPrefix("\(Self.path):5: "), "\(error)")
    }

    @Test("agent name validation: [a-z0-9_-]+, up to 64 characters")
    func agentNames() {
        for name in ["demo", "clamd", "a", "edr_sensor-2", String(repeating: "a", count: 64)] {
            #expect(AgentConfiguration.isValidName(name), "\(name)")
        }
        for name in ["", "Demo", "a b", "a.b", "a/b", "é", String(repeating: "a", count: 65)] {
            #expect(!AgentConfiguration.isValidName(name), "\(name)")
        }
    }

    @Test("allow_service_manager: off by default; set, it is parsed and --check-config warns, more sharply for root")
    func allowServiceManager() throws {
        #expect(try Configuration.parse(Self.minimalAgent, path: Self.path).agents[0].sandbox.allowServiceManager == false)
        func warnings(_ sandbox: String) throws -> [String] {
            let configuration = try Configuration.parse(Self.minimalAgent + "\n[agent.sandbox]\n" + sandbox, path: Self.path)
            #expect(configuration.agents[0].sandbox.allowServiceManager == sandbox.contains("allow_service_manager = true"))
            return configuration.warnings.filter { $0.contains("allow_service_manager") }
        }
        #expect(try warnings("allow_service_manager = false\n").isEmpty)
        let root = try warnings("user = \"root\"\nallow_service_manager = true\n")
        #expect(root.count == 1 && root[0].hasPrefix("agent demo: sandbox: allow_service_manager = true") && root[0].contains("outside its sandbox"), "\(root)")
        let nobody = try warnings("allow_service_manager = true\n")
        #expect(nobody.count == 1 && nobody[0].contains("polkit grant user nobody"), "\(nobody)")
        let wrong = try error(in: Self.minimalAgent + "\n[agent.sandbox]\nallow_service_manager = \"yes\"\n")
        #expect(wrong.key == "agent[0].sandbox.allow_service_manager")
    }

    @Test("--check-config warns when an agent with a private network names an abstract Unix socket, which lives in the network namespace")
    func abstractSocketUnderPrivateNetwork() throws {
        func warnings(_ agent: String, _ sandbox: String = "") throws -> [String] {
            try Configuration.parse(Self.minimalAgent + "\n" + agent + "\n[agent.sandbox]\n" + sandbox, path: Self.path)
                .warnings.filter { $0.contains("abstract Unix socket") }
        }
        let check = "ready_check_exec = [\"/usr/bin/socat\", \"-\", \"ABSTRACT-CONNECT:usbguard\"]"
        let warned = try warnings(check)
        #expect(warned.count == 1)
        #expect(warned.first?.hasPrefix("agent demo: sandbox: ready_check_exec names an abstract Unix socket (ABSTRACT-CONNECT:usbguard)") == true, "\(warned)")
        #expect(try warnings("health_check_exec = [\"/bin/client\", \"--socket\", \"@/run/agent\"]").count == 1)
        #expect(try warnings("environment = [\"AGENT_SOCKET=unix:@agent\"]").first?.contains("environment.AGENT_SOCKET") == true)
        #expect(try warnings(check, "private_network = false\n").isEmpty, "the host's network: abstract sockets are reachable")
        #expect(try warnings("health_check_exec = [\"/bin/client\", \"/run/agent.sock\", \"user@host\"]").isEmpty, "a path, and an @ inside a word")
    }

    @Test("capabilities missing from backstopd's own bounding set (CapBnd) are warned about; the mask is read as proc(5) writes it")
    func capabilitiesOutsideTheBoundingSet() throws {
        // CAP_CHOWN (0), CAP_KILL (5), CAP_NET_ADMIN (12): 0x1021.
        let status = "Name:\tbackstopd\nCapEff:\t000001ffffffffff\nCapBnd:\t0000000000001021\nCapAmb:\t0000000000000000\n"
        let bounding = try #require(CapabilityBoundingSet.names(inStatus: status))
        #expect(bounding == ["CAP_CHOWN", "CAP_KILL", "CAP_NET_ADMIN"])
        #expect(CapabilityBoundingSet.names(inStatus: "Name:\tx\n") == nil)
        #expect(CapabilityBoundingSet.names(inStatus: "CapBnd:\tzz\n") == nil)
        #expect(CapabilityBoundingSet.current != nil, "this test process's own, from /proc/self/status")

        func warnings(_ capabilities: String) throws -> [String] {
            let configuration = try Configuration.parse(
                Self.minimalAgent + "\n[agent.sandbox]\ncapabilities = \(capabilities)\n", path: Self.path)
            return Configuration.capabilityWarnings(configuration.agents[0], boundingSet: bounding)
        }
        #expect(try warnings("[]").isEmpty)
        #expect(try warnings("[\"CAP_NET_ADMIN\", \"CAP_KILL\"]").isEmpty)
        let missing = try warnings("[\"CAP_NET_ADMIN\", \"CAP_SYS_ADMIN\", \"CAP_NET_RAW\"]")
        #expect(missing.count == 1)
        #expect(missing.first?.hasPrefix("agent demo: sandbox: capabilities: CAP_SYS_ADMIN, CAP_NET_RAW are not in backstopd's own capability bounding set") == true,
                "\(missing)")
    }
}
