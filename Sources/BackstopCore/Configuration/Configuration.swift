import CSystemd
import Foundation

/// The whole configuration of a Backstop daemon (`/etc/backstop/backstop.toml`).
public struct Configuration: Sendable, Equatable {
    /// The default location of the configuration file.
    public static let defaultPath = "/etc/backstop/backstop.toml"

    /// The file it was read from, for messages.
    public var path: String
    /// The `[daemon]` table; its defaults when the file has none.
    public var daemon: DaemonConfiguration
    /// The `[[agent]]` tables in file order; names are unique.
    public var agents: [AgentConfiguration]

    /// A configuration as if read from `path`; by default `[daemon]` defaults and no agents.
    public init(path: String, daemon: DaemonConfiguration = DaemonConfiguration(), agents: [AgentConfiguration] = []) {
        self.path = path
        self.daemon = daemon
        self.agents = agents
    }

    /// Things that are valid but probably not meant: no agents, a program that is not
    /// there (yet) or not executable. `backstopd --check-config` prints them.
    public var warnings: [String] {
        var warnings: [String] = []
        if agents.isEmpty { warnings.append("\(path): no [[agent]] is configured; backstopd will supervise nothing") }
        for agent in agents {
            let programs: [(key: String, words: [String], consequence: String)] = [
                ("exec", agent.exec, "starts will fail until it is"),
                ("safe_mode_exec", agent.safeModeExec, "safe mode will fail until it is"),
                ("ready_check_exec", agent.readyCheckExec, "the agent will be stopped as a configuration error (exec-failed) until it is"),
                ("health_check_exec", agent.healthCheckExec, "health checks will not be counted until it is"),
            ]
            for (key, words, consequence) in programs {
                guard let program = words.first, program.hasPrefix("/"), !program.contains("{content}"),
                    !FileManager.default.isExecutableFile(atPath: program)
                else { continue }
                warnings.append("agent \(agent.name): \(key): \(program) is not an executable file (yet); \(consequence)")
            }
            if let link = agent.contentLink, let reason = Self.contentLinkUnwritable(link) {
                warnings.append("agent \(agent.name): content_link \(link) cannot be made: \(reason); the agent will not start on a version until it can (exec-failed, not counted against the content)")
            }
            // Probation must outlast the time it takes to notice a hang, or a hanging version is promoted first.
            let detection = max(
                agent.watchdogSeconds, agent.healthCheckExec.isEmpty ? 0 : agent.healthCheckIntervalSeconds * agent.healthCheckFailures)
            if detection > 0, agent.probationSeconds <= detection {
                warnings.append("agent \(agent.name): probation_sec (\(agent.probationSeconds)) is not longer than the \(detection) s it takes to notice a hang (watchdog_sec, or health_check_interval_sec × health_check_failures); a version that hangs could be promoted before it is caught")
            }
            let keys = TrustedKeys(directory: agent.stagingRules.trustedKeysDirectory)
            if agent.stagingRules.requireSignature, keys.keys.isEmpty {
                warnings.append("agent \(agent.name): require_signature is set but \(agent.stagingRules.trustedKeysDirectory) holds no trusted key (*.pem); every bundle will be refused until it does")
            }
            for problem in keys.problems { warnings.append("agent \(agent.name): trusted_keys: \(problem)") }
            if agent.runner == .direct || agent.preflightSeconds > 0 {
                do throws(SandboxError) { _ = try SandboxAccount.resolve(agent.sandbox) } catch {
                    warnings.append("agent \(agent.name): sandbox: \(error); the agent will not start until it does")
                }
                if agent.transientUnit == nil || agent.preflightSeconds > 0, let reason = BubblewrapSandbox.unavailableReason {
                    warnings.append("agent \(agent.name): \(reason); the agent will not start until it is")
                }
                if agent.transientUnit == nil || agent.preflightSeconds > 0, let bounding = CapabilityBoundingSet.current {
                    warnings += Self.capabilityWarnings(agent, boundingSet: bounding)
                }
                if agent.transientUnit != nil, sd_booted() <= 0 {
                    warnings.append("agent \(agent.name): sandbox.engine = \"systemd\" needs backstopd to run under systemd, which does not run this machine; the agent will not start")
                }
                // What the sandbox will leave out here: writable paths that do not exist or are
                // Backstop's, hidden paths it needs, limits without means. (Nothing to hide or to
                // make read-only is no loss; the system call filter is the systemd engine's.)
                if agent.transientUnit == nil, let sandbox = try? BubblewrapSandbox(agent: agent, daemon: daemon) {
                    for line in sandbox.plan(agent.exec).report.notApplied where line.setting != "system_call_filter" {
                        let missing = line.detail.hasSuffix(": does not exist")
                        guard !missing || line.setting == "read_write_paths" else { continue }
                        warnings.append("agent \(agent.name): sandbox: \(line.setting) not applied: \(line.detail)"
                            + (missing ? "; the agent will not start until it does" : ""))
                    }
                }
            }
            if agent.sandbox.allowServiceManager {
                warnings.append("agent \(agent.name): sandbox: allow_service_manager = true leaves systemd's sockets and the system D-Bus reachable; "
                    + (agent.sandbox.user == "root" || agent.sandbox.user == "0"
                        ? "as root the agent can have systemd start any process outside its sandbox (systemd-run), so the sandbox holds it only as far as it chooses"
                        : "the agent can ask systemd for whatever D-Bus policy and polkit grant user \(agent.sandbox.user)"))
            }
            if agent.transientUnit == nil || agent.preflightSeconds > 0, let bytes = agent.sandbox.memoryMaxBytes,
               let reason = BubblewrapSandbox.memoryCgroupUnavailableReason {
                warnings.append("agent \(agent.name): sandbox: memory_max (\(SandboxSpec.formatBytes(bytes))) can only be an RLIMIT_DATA here: \(reason); an allocation past it fails inside the agent, which may report it as anything (clamd: \"Malformed database\"), so its failures name the limit but cannot be told from the content's")
            }
            if agent.sandbox.privateNetwork, let (key, word) = Self.abstractSocketWord(agent) {
                warnings.append("agent \(agent.name): sandbox: \(key) names an abstract Unix socket (\(word)), which belongs to the network namespace: with private_network = true the agent cannot reach the host's; set private_network = false if it must")
            }
            if let bytes = agent.sandbox.tmpSizeBytes, !agent.sandbox.privateTmp {
                warnings.append("agent \(agent.name): sandbox: tmp_size (\(SandboxSpec.formatBytes(bytes))) has no effect with private_tmp = false: the agent writes the host's /tmp")
            }
            let crashSignals = agent.successExitStatus.signals.intersection([SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE, SIGKILL, SIGSYS, SIGTRAP])
            if !crashSignals.isEmpty {
                let names = crashSignals.sorted().map(SignalName.of)
                warnings.append("agent \(agent.name): success_exit_status lists \(names.joined(separator: ", ")), which a crash or the OOM killer sends: such an end is a clean exit, never counted against the content, so a version that crashes this way is never rolled back")
            }
            if agent.preflightSeconds > 0, agent.watchdogSeconds > 0, agent.preflightSeconds <= agent.watchdogSeconds {
                warnings.append("agent \(agent.name): preflight_sec (\(agent.preflightSeconds)) is not longer than watchdog_sec (\(agent.watchdogSeconds)); a version that hangs after READY=1 passes its preflight")
            }
            if agent.preflightSeconds > 0 {
                warnings += Self.preflightDifferences(agent).map { "agent \(agent.name): preflight: \($0)" }
            }
        }
        return warnings
    }

    /// Why backstopd could not make or switch a `content_link` at `link` (in the directory
    /// holding it, or the first of its parents that exists, which backstopd would create the
    /// rest in): that directory is on a read-only mount in this mount namespace, as a unit's
    /// `ProtectSystem=` or `ReadOnlyPaths=` makes /etc or /usr (`backstopd --check-config` run
    /// by `systemctl reload` sees the namespace of backstopd's own unit). Nil when it is writable.
    static func contentLinkUnwritable(_ link: String) -> String? {
        var directory = (link as NSString).deletingLastPathComponent
        while !BubblewrapSandbox.exists(directory), directory != "/" { directory = (directory as NSString).deletingLastPathComponent }
        var info = statvfs()
        guard statvfs(directory, &info) == 0, info.f_flag & UInt(ST_RDONLY) != 0 else { return nil }
        return "\(directory) is on a read-only mount here (in a unit with ProtectSystem= or ReadOnlyPaths=, add ReadWritePaths=\(directory) to a drop-in)"
    }

    /// The first word of `agent`'s programs or environment that names an abstract Unix socket
    /// (`@name`, `unix:@name`, `unix-abstract:name`, socat's `ABSTRACT-CONNECT:name`), with its key.
    static func abstractSocketWord(_ agent: AgentConfiguration) -> (key: String, word: String)? {
        let words: [(String, [String])] = [
            ("exec", agent.exec), ("safe_mode_exec", agent.safeModeExec), ("ready_check_exec", agent.readyCheckExec),
            ("health_check_exec", agent.healthCheckExec),
        ] + agent.environment.sorted { $0.key < $1.key }.map { ("environment.\($0.key)", [$0.value]) }
        for (key, values) in words {
            for word in values {
                let lower = word.lowercased()
                let named = ["unix:@", "unix-abstract:", "abstract-connect:", "abstract-client:"].contains { lower.contains($0) }
                if named || (word.hasPrefix("@") && word.count > 1 && !word.contains(" ")) { return (key, word) }
            }
        }
        return nil
    }

    /// The warning for `agent`'s `capabilities` that `boundingSet` (backstopd's own) lacks:
    /// bubblewrap can leave an agent only what backstopd holds. Empty when none is missing.
    static func capabilityWarnings(_ agent: AgentConfiguration, boundingSet: Set<String>) -> [String] {
        let missing = CapabilityBoundingSet.missing(agent.sandbox.capabilities, from: boundingSet)
        guard !missing.isEmpty else { return [] }
        return ["agent \(agent.name): sandbox: capabilities: \(missing.joined(separator: ", ")) \(missing.count == 1 ? "is" : "are") not in backstopd's own capability bounding set (CapBnd in /proc/self/status; CapabilityBoundingSet= of the unit that starts it), so the agent cannot have \(missing.count == 1 ? "it" : "them") under bubblewrap; add \(missing.count == 1 ? "it" : "them") to backstopd's bounding set"
            + (agent.transientUnit == nil ? " or run the agent with sandbox.engine = \"systemd\"" : " (its preflight instance runs under bubblewrap)")]
    }

    /// The settings that make a preflight instance live differently from the live agent, so
    /// that it can fail where the live agent would not (a control run then tells; see
    /// ``AgentPolicy/preflightFailed(_:reason:detail:control:at:)``): the live agent on the
    /// host's network, and pid files or locks among the writable paths, which the instance
    /// gets copies of while the live agent holds them.
    static func preflightDifferences(_ agent: AgentConfiguration) -> [String] {
        var differences: [String] = []
        if !agent.sandbox.privateNetwork {
            differences.append("a preflight instance has a network of its own with only a loopback device, while the live agent uses the host's (private_network = false): a version that talks to a local service (127.0.0.1) or needs the host's network fails its preflight for that reason, and is then activated under probation if the active version fails the same preflight")
        }
        for path in agent.sandbox.readWritePaths where BubblewrapSandbox.exists(path) && Preflight.isKernelInterface(path) {
            differences.append("read_write_paths \(path) is a device or kernel interface, which the preflight cannot copy: its instance writes the live one, and what a version does there in preflight reaches this machine")
        }
        for path in agent.sandbox.readWritePaths where holdsPIDFileOrLock(path) {
            differences.append("read_write_paths entry \(path) looks like a pid file or lock directory; a preflight instance gets a copy of it, holding what the live agent holds, and an agent that refuses to start beside a running copy of itself fails every preflight")
        }
        return differences
    }

    /// Whether `path` is a pid file or lock, or a run-time directory that holds them (below /run, /var/run or /var/lock, or files named *.pid or *.lock in it).
    private static func holdsPIDFileOrLock(_ path: String) -> Bool {
        let markers = [".pid", ".lock", ".lck"]
        if markers.contains(where: path.hasSuffix) { return true }
        if ["/run/", "/var/run/", "/var/lock/"].contains(where: { (path + "/").hasPrefix($0) }) { return true }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return entries.contains { name in markers.contains(where: name.hasSuffix) }
    }

    /// The agent called `name`, if configured.
    public func agent(named name: String) -> AgentConfiguration? {
        agents.first { $0.name == name }
    }
}

/// The `[daemon]` table.
public struct DaemonConfiguration: Sendable, Equatable {
    /// `state_directory`: the store and state files, one directory per agent below it.
    public var stateDirectory = "/var/lib/backstop"
    /// `runtime_directory`: the control socket and the agents' notify sockets.
    public var runtimeDirectory = "/run/backstop"

    public init() {}

    /// `<runtime_directory>/io.backstop.Manager`, the Varlink control socket.
    public var controlSocketPath: String { runtimeDirectory + "/io.backstop.Manager" }

    /// `<runtime_directory>/inaccessible`: what sandboxes mount over inaccessible paths.
    public var placeholderDirectory: String { runtimeDirectory + "/inaccessible" }

    /// `<runtime_directory>/preflight/<agent>`: the private copies of a preflight's writable paths.
    public func preflightDirectory(agent: String) -> String { runtimeDirectory + "/preflight/" + agent }

    /// `<runtime_directory>/notify/<agent>`, the agent's `NOTIFY_SOCKET`.
    public func notifySocketPath(agent: String) -> String { notifyDirectory + "/" + agent }
    /// `<runtime_directory>/notify`: the agents' notify sockets, root's alone (mode 0700).
    public var notifyDirectory: String { runtimeDirectory + "/notify" }
}

/// How an agent is run.
public enum RunnerKind: String, Sendable, Equatable, CaseIterable {
    /// Backstop spawns and reaps the agent itself.
    case direct
    /// The agent is an existing systemd unit (`unit`).
    case systemd
}

/// One `[[agent]]` table. Durations carry their unit in the name, as the TOML keys do.
public struct AgentConfiguration: Sendable, Equatable {
    /// `name`: `[a-z0-9_-]+`, unique.
    public var name: String
    /// `exec`: the command line; `{content}` is replaced by the active version's path.
    public var exec: [String]
    /// `runner`, default `direct`: Backstop runs `exec` itself, or (`systemd`) supervises the existing unit `unit`.
    public var runner: RunnerKind = .direct
    /// `unit`: the systemd unit, with `runner = "systemd"`.
    public var unit: String?
    /// `notify`, default false: true means ready is `READY=1` on `NOTIFY_SOCKET` and `watchdog_sec` applies.
    public var notify = false
    /// `content_link`: a path made a symlink to the active version, nil when unset.
    public var contentLink: String?
    /// `failure_threshold`, default 3: failures within the window that make a crash loop.
    public var failureThreshold = 3
    /// `failure_window_sec`, default 120: the sliding window failures are counted in, in seconds.
    public var failureWindowSeconds = 120
    /// `probation_sec`, default 600: seconds of healthy running a candidate needs to become known-good.
    public var probationSeconds = 600
    /// `restart_delay_ms`, default 100: the first backoff step in milliseconds, doubled per further failure.
    public var restartDelayMilliseconds = 100
    /// `restart_delay_max_sec`, default 30: the backoff cap in seconds; a healthy run this long resets the backoff.
    public var restartDelayMaxSeconds = 30
    /// `start_timeout_sec`, default 90: seconds the agent has to become ready before the start counts as a failure.
    public var startTimeoutSeconds = 90
    /// 0 = off.
    public var watchdogSeconds = 0
    /// `boot_good_after_sec`, default 120: seconds the agent must stay healthy for the boot to count as good.
    public var bootGoodAfterSeconds = 120
    /// `boot_failure_threshold`, default 2: consecutive failed boots that make a boot loop.
    public var bootFailureThreshold = 2
    /// `boot_loop_stops_agent`, default false: a boot loop with no candidate to roll back
    /// walks the escalation ladder (an older known-good version, safe mode, give up) on boot
    /// evidence alone. Off, it is reported and the agent keeps running on its content.
    public var bootLoopStopsAgent = false
    /// Empty: safe mode means "do not start".
    public var safeModeExec: [String] = []
    /// `preflight_sec`, default 0 (off): seconds a staged version must survive in a throwaway,
    /// sandboxed instance of the agent before it is activated.
    public var preflightSeconds = 0
    /// `preflight_exec`, default `[]` (the agent's `exec`): the command line of the preflight instance.
    public var preflightExec: [String] = []
    /// `environment`, default `[]`: variables the agent's processes get, by name, from
    /// `"KEY=value"` strings (a later one replacing an earlier one, as systemd's
    /// `Environment=`), on top of `PATH` and the locale (``AgentEnvironment``).
    public var environment: [String: String] = [:]
    /// `[agent.sandbox]`: the agent's confinement; its defaults when the table is absent.
    public var sandbox = SandboxSpec()
    /// `ready_check_exec`, default `[]`: a command run after each start (again after
    /// a pause while it fails) until it exits 0; the agent is ready only then.
    public var readyCheckExec: [String] = []
    /// `health_check_exec`, default `[]`: a command run every `health_check_interval_sec`
    /// while the agent is ready; a non-zero exit, a signal or a timeout is a failed check.
    public var healthCheckExec: [String] = []
    /// `health_check_interval_sec`, default 30: seconds between health checks.
    public var healthCheckIntervalSeconds = 30
    /// `health_check_timeout_sec`, default 10: seconds after which a ready or health check is killed and failed.
    public var healthCheckTimeoutSeconds = 10
    /// `health_check_failures`, default 3: failed health checks in a row that make one failure of the agent.
    public var healthCheckFailures = 3
    /// `clean_exit_is_failure`, default false: an exit with code 0 counts against the content.
    public var cleanExitIsFailure = false
    /// `success_exit_status`, default `[]`: exit codes and signal names (`143`, `"SIGTERM"`)
    /// that are clean exits too, as systemd's `SuccessExitStatus=`.
    public var successExitStatus = SuccessExitStatus()
    /// `clean_exit`, default `"backoff"`: `"normal"` when clean exits are the agent's normal
    /// life, restarted after `restart_delay_ms` with no growing backoff and no degraded status.
    public var cleanExit = CleanExit.backoff
    /// `max_bundle_bytes`, `max_files`, `require_signature` and `trusted_keys`: what a
    /// bundle must meet to be staged.
    public var stagingRules = StagingRules()
    /// `keep_versions`, default 5, at least 1: versions whose files the store keeps besides
    /// the active, the last known-good and the candidate; older ones are removed (a
    /// quarantined version keeps its record, so it stays refused).
    public var keepVersions = 5

    /// An agent with `name` and `exec` and every other key at its default.
    public init(name: String, exec: [String]) {
        self.name = name
        self.exec = exec
    }

    /// With `runner = "direct"` and `[agent.sandbox] engine = "systemd"`: the transient unit
    /// the agent runs as, `backstop-<name>.service`.
    public var transientUnit: String? {
        runner == .direct && sandbox.engine == .systemd ? "backstop-\(name).service" : nil
    }

    /// The unit Backstop watches for this agent: its own (`unit`) or its transient one.
    public var watchedUnit: String? { unit ?? transientUnit }

    /// The policy numbers of this agent.
    public var policySettings: PolicySettings {
        PolicySettings(
            agent: name, failureThreshold: failureThreshold, failureWindowSeconds: Double(failureWindowSeconds),
            probationSeconds: Double(probationSeconds), restartDelayMilliseconds: restartDelayMilliseconds,
            restartDelayMaxSeconds: Double(restartDelayMaxSeconds), startTimeoutSeconds: Double(startTimeoutSeconds),
            // A unit is ready when systemd says it is active, as for READY=1; a transient
            // unit's watchdog is systemd's (WatchdogSec=), its end reported as `hung`.
            watchdogSeconds: transientUnit == nil ? Double(watchdogSeconds) : 0, notify: notify || watchedUnit != nil,
            hasSafeModeExec: !safeModeExec.isEmpty, bootLoopStopsAgent: bootLoopStopsAgent,
            cleanExitIsFailure: cleanExitIsFailure, hasReadyCheck: !readyCheckExec.isEmpty,
            healthCheckIntervalSeconds: healthCheckExec.isEmpty ? nil : Double(healthCheckIntervalSeconds),
            healthCheckTimeoutSeconds: Double(healthCheckTimeoutSeconds), healthCheckFailures: healthCheckFailures,
            programIsContent: exec.first?.contains("{content}") == true, successExitStatus: successExitStatus,
            cleanExit: cleanExit)
    }

    /// Whether `name` is a valid agent name: `[a-z0-9_-]+`, at most 64 characters.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64
            && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }
}

/// A configuration file that cannot be used, with the place and key at fault.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    /// The configuration file at fault.
    public var path: String
    /// 1-based line, when known.
    public var line: Int?
    /// The dotted key, e.g. `agent[1].exec`, when one is at fault.
    public var key: String?
    /// What is wrong, without the place (that is `path`, `line` and `key`).
    public var message: String

    /// An error in `path`, at `line` and `key` when known.
    public init(path: String, line: Int?, key: String?, message: String) {
        self.path = path
        self.line = line
        self.key = key
        self.message = message
    }

    /// `FILE:LINE: KEY: message`, the way compilers print errors.
    public var description: String {
        var text = path
        if let line { text += ":\(line)" }
        if let key { text += ": \(key)" }
        return text + ": " + message
    }
}
