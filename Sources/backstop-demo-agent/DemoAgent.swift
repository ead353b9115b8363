import ArgumentParser
import Glibc

/// Command-line entry point: loads content the way the sensor would, then
/// hands over to ``AgentRuntime`` for the long-running part.
struct DemoAgent: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backstop-demo-agent",
        abstract: "A stand-in EDR sensor that re-enacts the Channel File 291 content crash.",
        discussion: "The content format is described in examples/content/README.md."
    )

    /// Exit status for content the agent refuses to load.
    static let contentErrorExitCode: Int32 = 2

    /// The content version directory.
    @Option(help: ArgumentHelp("Content version directory to load.", valueName: "dir"))
    var content: String

    /// Where to timestamp an imminent overrun, for crash-detection benchmarks.
    @Option(help: ArgumentHelp(
        "Write the CLOCK_MONOTONIC time in nanoseconds to this file just before an input-array overrun.",
        valueName: "path"))
    var crashTimestampFile: String?

    /// Loads and evaluates the content, then runs until stopped; never
    /// returns normally.
    func run() throws {
        restoreDefaultFaultHandling()
        let version = contentVersion()
        recordStart(version: version)
        let contentSet = try loadContent()
        let interpreter = try ContentInterpreter(templates: contentSet.templates) { [crashTimestampFile] in
            if let crashTimestampFile { recordCrashTimestamp(to: crashTimestampFile) }
        }
        Console.out(
            "loaded content \(version) (\(contentSet.templates.count) templates, "
                + "\(contentSet.instances.count) instances) pid \(getpid())")
        selfTest(contentSet.instances, with: interpreter)
        MainActor.assumeIsolated {
            AgentRuntime(content: contentSet, version: version, interpreter: interpreter).run()
        }
    }

    /// The Swift runtime installs a crash handler that symbolicates and prints
    /// a backtrace before the process dies. The overrun must look like a native
    /// sensor crash (immediate death by SIGSEGV, no added latency for
    /// benchmarks to measure), so hand the faults back to the kernel. SIGABRT
    /// too: a supervisor aborts a hung agent and expects it gone at once.
    private func restoreDefaultFaultHandling() {
        signal(SIGSEGV, SIG_DFL)
        signal(SIGBUS, SIG_DFL)
        signal(SIGABRT, SIG_DFL)
    }

    /// BACKSTOP_CONTENT_VERSION, or the content directory's name.
    private func contentVersion() -> String {
        environment("BACKSTOP_CONTENT_VERSION") ?? Files.baseName(content)
    }

    /// Appends `<pid> <version>` to BACKSTOP_DEMO_MARK_FILE so tests can count
    /// starts, including the ones that go on to fail. Done before loading for that reason.
    private func recordStart(version: String) {
        guard let path = environment("BACKSTOP_DEMO_MARK_FILE") else { return }
        do {
            try Files.append("\(getpid()) \(version)\n", to: path)
        } catch {
            // A test aid must not turn into a failure mode of its own.
            Console.error("warning: cannot record start in \(path): \(error)")
        }
    }

    /// Loads the content directory, turning a refusal into exit status 2.
    private func loadContent() throws -> ContentSet {
        do {
            return try ContentLoader.load(from: content)
        } catch {
            Console.error("content error: \(error)")
            throw ExitCode(Self.contentErrorExitCode)
        }
    }

    /// Evaluates every instance once, as the sensor does when content
    /// arrives; an overlong instance never returns from here.
    private func selfTest(_ instances: [Instance], with interpreter: ContentInterpreter) {
        // Reporting the verdicts keeps an optimising compiler from deciding
        // the reads are unused and dropping the very overrun we re-enact.
        let matched = instances.filter(interpreter.matches).count
        Console.error("content self-test: evaluated \(instances.count) instances, \(matched) matched")
    }
}

/// Timestamps the imminent overrun for benchmarks; failure only warns,
/// because the crash itself is the point.
private func recordCrashTimestamp(to path: String) {
    do {
        try Files.replaceDurably(path, with: "\(monotonicNanoseconds())\n")
    } catch {
        Console.error("warning: cannot write crash timestamp to \(path): \(error)")
    }
}

/// The value of environment variable `name`, treating empty as unset.
private func environment(_ name: String) -> String? {
    guard let value = getenv(name), value.pointee != 0 else { return nil }
    return String(cString: value)
}
