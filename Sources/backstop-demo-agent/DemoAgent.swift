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

    /// Where to timestamp starts and overruns, for benchmarks.
    @Option(help: ArgumentHelp(
        "Append \"start PID NS\" to this file as the agent starts and \"crash PID NS\" just before an input-array overrun (NS: CLOCK_MONOTONIC nanoseconds).",
        valueName: "path"))
    var timestampFile: String?

    /// Loads and evaluates the content, then runs until stopped; never
    /// returns normally.
    func run() throws {
        let timestamps = timestampFile.map(TimestampLog.init)
        timestamps?.record("start")
        restoreDefaultFaultHandling()
        let version = contentVersion()
        let contentSet = try loadContent()
        let interpreter = try ContentInterpreter(templates: contentSet.templates) {
            timestamps?.record("crash")
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

/// The `--timestamp-file`, opened once at start so that a timestamp costs one
/// write(2) (no fsync: the page cache keeps what a dying process wrote). Failures
/// only warn: the agent's behaviour is the point, not the benchmark aid.
private struct TimestampLog {
    let file: FileDescriptor?
    let path: String

    init(path: String) {
        self.path = path
        do { file = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_APPEND) } catch {
            Console.error("warning: cannot open the timestamp file \(path): \(error)")
            file = nil
        }
    }

    /// Appends `event PID NS`, NS taken just before the write.
    func record(_ event: String) {
        guard let file else { return }
        do { try file.writeAll("\(event) \(getpid()) \(monotonicNanoseconds())\n") } catch {
            Console.error("warning: cannot write to the timestamp file \(path): \(error)")
        }
    }
}

/// The value of environment variable `name`, treating empty as unset.
private func environment(_ name: String) -> String? {
    guard let value = getenv(name), value.pointee != 0 else { return nil }
    return String(cString: value)
}
