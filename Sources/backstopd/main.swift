import ArgumentParser
import BackstopCore
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

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
        // Ignored from the start (the daemon logs it once it runs); agents get the default back.
        signal(SIGHUP, SIG_IGN)
        if checkConfig {
            let configuration: BackstopCore.Configuration
            do { configuration = try .load(path: config) } catch {
                FileHandle.standardError.write(Data("backstopd: \(error)\n".utf8))
                throw ExitCode(1)
            }
            let count = configuration.agents.count
            print("\(config): OK (\(count == 1 ? "1 agent" : "\(count) agents"))")
            for warning in configuration.warnings {
                FileHandle.standardError.write(Data("backstopd: warning: \(warning)\n".utf8))
            }
            return
        }
        // A file that does not load is replaced by its last good copy (and said); without one, refused.
        let effective: EffectiveConfiguration
        do { effective = try .load(path: config) } catch {
            FileHandle.standardError.write(Data("backstopd: \(error)\n".utf8))
            throw ExitCode(1)
        }
        if let problem = effective.problem { FileHandle.standardError.write(Data("backstopd: \(problem)\n".utf8)) }
        LoggingSystem.bootstrap { _ in JournalLogHandler(identifier: "backstopd") }
        let logger = Logger(label: "backstopd")
        let daemon = DaemonService(effective: effective, logger: logger)
        let group = ServiceGroup(
            services: [DaemonLifecycle(daemon: daemon, logger: logger)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        do { try await group.run() } catch {
            FileHandle.standardError.write(Data("backstopd: \(Self.describe(error))\n".utf8))
            throw ExitCode(1)
        }
    }

    /// An error that ended the daemon, for an operator: a file system error as
    /// `PATH: strerror` (with a hint when not run as root), anything else as it describes itself.
    static func describe(_ error: Error) -> String {
        guard let cocoa = error as? CocoaError, let path = cocoa.filePath,
              let cause = cocoa.underlying.map({ $0 as NSError }), cause.domain == NSPOSIXErrorDomain else { return "\(error)" }
        return "\(path): \(String(cString: strerror(Int32(cause.code))))" + (getuid() == 0 ? "" : " (backstopd runs as root)")
    }
}

/// Adapts ``DaemonService`` to swift-service-lifecycle: SIGTERM/SIGINT trigger the graceful
/// shutdown; SIGHUP (`systemctl reload backstopd`) asks for a reload of the configuration.
struct DaemonLifecycle: Service {
    let daemon: DaemonService
    let logger: Logger

    func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let (requests, request) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let listener = Task {
            for await _ in hangups { request.yield() }
        }
        defer { listener.cancel() }
        try await daemon.run(until: { try? await gracefulShutdown() }, reloadRequests: requests)
    }
}
