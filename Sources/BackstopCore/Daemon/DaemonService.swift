import CSystemd
import Foundation
import Logging

/// backstopd's main job: start the supervisor and the control socket, tell systemd
/// it is ready (sd_notify(3) `READY=1`; a no-op outside systemd), apply each reload
/// request, and on shutdown stop the agents before returning.
public struct DaemonService: Sendable {
    /// The configuration the daemon starts with: the file, or its last good copy.
    public let effective: EffectiveConfiguration
    /// Where the daemon's own entries go (normally a ``JournalLogHandler``).
    public let logger: Logger
    /// Where the last configuration that loaded is kept (``LastGoodConfiguration/file(environment:)``).
    public let lastGoodFile: String

    /// Prepares the service; nothing starts before ``run(until:reloadRequests:)``.
    public init(effective: EffectiveConfiguration, logger: Logger, lastGoodFile: String = LastGoodConfiguration.file()) {
        self.effective = effective
        self.logger = logger
        self.lastGoodFile = lastGoodFile
    }

    /// Runs until `shutdownRequested` returns, then stops every agent. Each element of
    /// `reloadRequests` (SIGHUP) reads the configuration file again and applies it (``reload(_:)``).
    /// - Throws: ``InstanceLock/Busy`` when another daemon uses the state directory, or
    ///   when the state or runtime directory, the boot ID or the control socket cannot be set up.
    public func run(until shutdownRequested: @Sendable () async -> Void, reloadRequests: AsyncStream<Void>) async throws {
        let configuration = effective.configuration
        do throws(StoreError) {
            let directory = try ContentStore.openStateDirectory(configuration.daemon.stateDirectory, creating: true)
            try? directory.close()
        } catch {
            if case .layoutRefused = error {
                logger.critical("backstopd does not start: the state directory is refused: \(error)",
                                metadata: ["path": "\(configuration.daemon.stateDirectory)", "error": "\(error)"])
                throw error
            }
            // Another error (not root, a read-only file system) is the instance lock's to report, below.
        }
        // A second daemon must not share either directory: it would take over the sockets.
        let locks = [
            try InstanceLock(directory: configuration.daemon.stateDirectory),
            try InstanceLock(directory: configuration.daemon.runtimeDirectory),
        ]
        defer { withExtendedLifetime(locks) {} }
        let supervisor = try Supervisor(configuration: configuration, logger: logger)
        // Listen first: recovery at start may take a while, and status calls then wait
        // for it instead of finding no daemon.
        let server: ControlServer
        do {
            server = try ControlServer(path: configuration.daemon.controlSocketPath, supervisor: supervisor, logger: logger)
        } catch {
            logger.critical("Cannot listen on the control socket.", metadata: [
                "path": "\(configuration.daemon.controlSocketPath)", "error": "\(error)",
            ])
            throw error
        }
        if let fileError = effective.fileError {
            await supervisor.setConfigurationProblem(ConfigurationProblem(error: fileError, running: .lastGood))
            logger.critical("The configuration file does not load (\(fileError)); backstopd runs on the last configuration that loaded, and the agents stay protected. Fix the file, then: systemctl reload backstopd.",
                            metadata: Self.metadata(of: fileError).merging([
                                "last_good_loaded_at": "\(effective.lastGoodLoadedAt.map(StatusText.rfc3339) ?? "-")",
                                "last_good_file": "\(lastGoodFile)",
                            ]) { $1 })
        } else if let text = effective.loadedText {
            keepAsLastGood(text, path: configuration.path)
        }
        do { try await supervisor.start() } catch {
            server.stop()
            throw error
        }
        Self.notifySystemd("READY=1\nSTATUS=\(await Self.statusLine(supervisor))")
        logger.info("backstopd \(Backstop.version) is running.", metadata: [
            "config": "\(configuration.path)", "agents": "\(configuration.agents.map(\.name).joined(separator: ","))",
        ])
        let watchdog = Task { await Self.pingWatchdog(through: supervisor) }
        let reloads = Task {
            for await _ in reloadRequests { await reload(supervisor) }
        }
        await shutdownRequested()
        reloads.cancel()
        watchdog.cancel()
        Self.notifySystemd("STOPPING=1\nSTATUS=Stopping agents")
        logger.info("Stopping: terminating the agents.")
        server.stop()
        await supervisor.shutdown()
        logger.info("Stopped.")
    }

    /// Reads the configuration file again and applies it (``Supervisor/reload(to:)``),
    /// telling systemd `RELOADING=1` meanwhile. A file that does not load changes nothing:
    /// the daemon goes on with what it runs, degraded, and says why.
    func reload(_ supervisor: Supervisor) async {
        let path = await supervisor.configuration.path
        Self.notifySystemd("RELOADING=1\nSTATUS=Reloading \(path)")
        await apply(path, to: supervisor)
        Self.notifySystemd("READY=1\nSTATUS=\(await Self.statusLine(supervisor))")
    }

    private func apply(_ path: String, to supervisor: Supervisor) async {
        let text: String
        let new: Configuration
        do {
            text = try Configuration.source(path: path)
            new = try Configuration.parse(text, path: path)
        } catch {
            await supervisor.fileNotApplied(error)
            logger.error("Reload refused: the configuration file does not load (\(error)); nothing changed, the agents run as before.",
                         metadata: Self.metadata(of: error))
            return
        }
        do {
            let summary = try await supervisor.reload(to: new)
            await supervisor.setConfigurationProblem(nil)
            keepAsLastGood(text, path: path)
            logger.notice("Reloaded \(path): \(Self.describe(summary)).", metadata: [
                "config": "\(path)", "unchanged": "\(summary.unchanged.joined(separator: ","))",
                "restarted": "\(summary.restarted.joined(separator: ","))", "removed": "\(summary.removed.joined(separator: ","))",
                "added": "\(summary.added.joined(separator: ","))",
            ])
        } catch {
            // The file is not what runs until a restart: degraded, as for a file that does not load.
            await supervisor.fileNotApplied(ConfigurationError(path: path, line: nil, key: "daemon", message: "\(error)"))
            logger.error("Reload refused: \(error); nothing changed.", metadata: ["config": "\(path)"])
        }
    }

    /// Keeps `text` as the last configuration that loaded; a failure is said, never fatal.
    private func keepAsLastGood(_ text: String, path: String) {
        guard (try? LastGoodConfiguration.read(for: path, from: lastGoodFile))?.text != text else { return }
        do { try LastGoodConfiguration(path: path, loadedAt: Date(), text: text).save(to: lastGoodFile) } catch {
            logger.error("Cannot keep the configuration as the last one that loaded; if the file breaks, backstopd will not start on it.",
                         metadata: ["path": "\(lastGoodFile)", "error": "\(error)"])
        }
    }

    /// The journal fields of a configuration error: the file, line and key apart, and the whole.
    private static func metadata(of error: ConfigurationError) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["config": "\(error.path)", "error": "\(error)"]
        if let line = error.line { metadata["config_line"] = "\(line)" }
        if let key = error.key { metadata["config_key"] = "\(key)" }
        return metadata
    }

    /// `restarted demo; removed old; 2 unchanged`, or `nothing changed`.
    static func describe(_ summary: ReloadSummary) -> String {
        let parts = [("restarted", summary.restarted), ("removed", summary.removed), ("added", summary.added)]
            .filter { !$0.1.isEmpty }.map { "\($0.0) \($0.1.joined(separator: ", "))" }
            + (summary.unchanged.isEmpty ? [] : ["\(summary.unchanged.count) unchanged"])
        return parts.isEmpty ? "nothing changed" : parts.joined(separator: "; ")
    }

    /// systemd's `STATUS=`: the agents, and whether the configuration file is what runs.
    static func statusLine(_ supervisor: Supervisor) async -> String {
        let count = await supervisor.configuration.agents.count
        let degraded = await supervisor.configurationProblem != nil
        return "Supervising \(count) agent(s)" + (degraded ? "; the configuration file does not load (backstopctl status)" : "")
    }

    /// Sends `WATCHDOG=1` at half the interval systemd asks for (`WatchdogSec=`, read with
    /// sd_watchdog_enabled(3)), each time after a round trip through the supervisor, so that
    /// a wedged supervisor stops the pings and systemd restarts the daemon. Returns at once
    /// when no watchdog is asked for; the only periodic wakeup of an idle daemon.
    static func pingWatchdog(through supervisor: Supervisor) async {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return }
        let interval = Duration.microseconds(Int64(microseconds / 2))
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            guard !Task.isCancelled else { return }
            await supervisor.heartbeat()
            notifySystemd("WATCHDOG=1")
        }
    }

    /// sd_notify(3) to the service manager; errors are ignored, as outside systemd there is none.
    static func notifySystemd(_ state: String) {
        _ = sd_notify(0, state)
    }
}
