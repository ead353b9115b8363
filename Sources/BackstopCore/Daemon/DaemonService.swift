import CSystemd
import Foundation
import Logging

/// backstopd's main job: start the supervisor and the control socket, tell systemd
/// it is ready (sd_notify(3) `READY=1`; a no-op outside systemd), and on shutdown
/// stop the agents before returning.
public struct DaemonService: Sendable {
    /// The validated configuration the daemon runs with.
    public let configuration: Configuration
    /// Where the daemon's own entries go (normally a ``JournalLogHandler``).
    public let logger: Logger

    /// Prepares the service; nothing starts before ``run(until:)``.
    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Runs until `shutdownRequested` returns, then stops every agent.
    /// - Throws: ``InstanceLock/Busy`` when another daemon uses the state directory, or
    ///   when the state or runtime directory, the boot ID or the control socket cannot be set up.
    public func run(until shutdownRequested: @Sendable () async -> Void) async throws {
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
        do { try await supervisor.start() } catch {
            server.stop()
            throw error
        }
        Self.notifySystemd("READY=1\nSTATUS=Supervising \(configuration.agents.count) agent(s)")
        logger.info("backstopd \(Backstop.version) is running.", metadata: [
            "config": "\(configuration.path)", "agents": "\(configuration.agents.map(\.name).joined(separator: ","))",
        ])
        let watchdog = Task { await Self.pingWatchdog(through: supervisor) }
        await shutdownRequested()
        watchdog.cancel()
        Self.notifySystemd("STOPPING=1\nSTATUS=Stopping agents")
        logger.info("Stopping: terminating the agents.")
        server.stop()
        await supervisor.shutdown()
        logger.info("Stopped.")
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
