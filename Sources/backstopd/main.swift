import ArgumentParser
import BackstopCore
import Foundation
import Logging
import ServiceLifecycle

/// `backstopd`: the Backstop daemon.
@main
struct BackstopDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backstopd",
        abstract: "Supervise endpoint security agents and roll back content that makes them fail.",
        version: FaultInjection.isCompiledIn ? Backstop.version + " (debug build: fault injection compiled in)" : Backstop.version)

    @Option(name: .long, help: "The configuration file.")
    var config = BackstopCore.Configuration.defaultPath

    @Flag(name: .long, help: "Check the configuration file, print what is wrong, and exit.")
    var checkConfig = false

    func run() async throws {
        TOMLProbe.answerIfAsked()
        let configuration: BackstopCore.Configuration
        do { configuration = try .load(path: config) } catch {
            FileHandle.standardError.write(Data("backstopd: \(error)\n".utf8))
            throw ExitCode(1)
        }
        if checkConfig {
            let count = configuration.agents.count
            print("\(config): OK (\(count == 1 ? "1 agent" : "\(count) agents"))")
            for warning in configuration.warnings {
                FileHandle.standardError.write(Data("backstopd: warning: \(warning)\n".utf8))
            }
            return
        }
        LoggingSystem.bootstrap { _ in JournalLogHandler(identifier: "backstopd") }
        let logger = Logger(label: "backstopd")
        let daemon = DaemonService(configuration: configuration, logger: logger)
        let group = ServiceGroup(
            services: [DaemonLifecycle(daemon: daemon)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}

/// Adapts ``DaemonService`` to swift-service-lifecycle: SIGTERM/SIGINT trigger the graceful shutdown.
struct DaemonLifecycle: Service {
    let daemon: DaemonService

    func run() async throws {
        try await daemon.run {
            try? await gracefulShutdown()
        }
    }
}
