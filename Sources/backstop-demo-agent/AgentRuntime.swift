import Dispatch
import Glibc

/// The long-running half of the agent: readiness, heartbeats, signals and
/// whatever misbehaviour the content asked for. Confined to the main actor,
/// which `dispatchMain()` turns into the main dispatch queue.
@MainActor
final class AgentRuntime {
    private let content: ContentSet
    private let version: String
    private let interpreter: ContentInterpreter
    /// Keeps signal and timer sources alive; dispatch cancels released ones.
    private var sources: [any DispatchSourceProtocol] = []

    /// Prepares a runtime for already loaded and evaluated content.
    init(content: ContentSet, version: String, interpreter: ContentInterpreter) {
        self.content = content
        self.version = version
        self.interpreter = interpreter
    }

    /// Runs until stopped by SIGTERM/SIGINT, or as the content's behaviour dictates.
    func run() -> Never {
        installStopHandlers()
        switch content.behavior {
        case nil:
            startNormally()
        case .exit(let code):
            Console.error("behavior exit: exiting with status \(code)")
            exit(code)
        case .hangAfterStart:
            hang()
        case .slowStart(let seconds):
            ServiceManager.notify("STATUS=starting (slow-start \(seconds)s)")
            after(seconds) { $0.startNormally() }
        case .crashAfter(let seconds):
            startNormally()
            after(seconds) { $0.overrunFirstTemplate() }
        }
        withExtendedLifetime(self) { dispatchMain() }
    }

    /// Reports readiness and starts heartbeating: a healthy sensor.
    private func startNormally() {
        becomeReady()
        startHeartbeat()
    }

    /// Sends the STATUS line and READY=1 as separate datagrams, so even a
    /// naive reader that expects one assignment per datagram sees READY=1.
    private func becomeReady() {
        ServiceManager.notify(
            "STATUS=loaded \(content.templates.count) templates, \(content.instances.count) instances from \(version)")
        ServiceManager.notify("READY=1")
    }

    /// Sends WATCHDOG=1 now and then every half watchdog timeout, if the
    /// supervisor asked for a watchdog at all.
    private func startHeartbeat() {
        guard let interval = ServiceManager.heartbeatInterval() else { return }
        let timer = DispatchSource.makeTimerSource(queue: .main)
        timer.schedule(deadline: .now(), repeating: interval)
        timer.setEventHandler { ServiceManager.notify("WATCHDOG=1") }
        timer.resume()
        sources.append(timer)
    }

    /// Routes SIGTERM and SIGINT to ``stop()`` via the main queue. The
    /// signals are ignored first so their default action cannot kill us;
    /// dispatch still observes them. They are only handled once the main
    /// queue runs, which a hung main thread never lets happen.
    private func installStopHandlers() {
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        for signalNumber in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .main)
            source.setEventHandler { AgentRuntime.stop() }
            source.resume()
            sources.append(source)
        }
    }

    /// Clean shutdown: the agent holds nothing that needs releasing.
    private nonisolated static func stop() -> Never {
        Console.out("stopping")
        ServiceManager.notify("STOPPING=1")
        exit(0)
    }

    /// Reports readiness, then wedges the main thread the way a deadlocked
    /// event loop would: no heartbeats, and since the stop handlers never get
    /// to run, only SIGKILL ends the process.
    private func hang() -> Never {
        becomeReady()
        Console.error("behavior hang-after-start: hanging")
        while true {
            pause()
        }
    }

    /// Runs `action` on the main actor after `seconds`.
    private func after(_ seconds: Double, _ action: @escaping @MainActor (AgentRuntime) -> Void) {
        Task {
            try? await Task.sleep(for: .seconds(seconds))
            action(self)
        }
    }

    /// Re-enacts the overrun long after a healthy start, as if an instance
    /// one field too long had just been delivered for the first template.
    private func overrunFirstTemplate() {
        // The loader guarantees a template exists when crash-after is set.
        let template = content.templates[0]
        Console.error("behavior crash-after: evaluating a \(template.fieldCount + 1)-value \(template.name) instance")
        let overlong = Instance(
            templateName: template.name,
            values: Array(repeating: "crash-after", count: template.fieldCount + 1),
            origin: "behavior crash-after")
        let matched = interpreter.matches(overlong)
        // Only reachable if the guard page failed to fault.
        Console.error("overrun of \(template.name) did not fault (matched: \(matched))")
        exit(1)
    }
}
