import Foundation

#if DEBUG
import Synchronization
#endif

/// Test-only fault injection, compiled into debug builds only (`#if DEBUG`; a release
/// build, which `make install` makes, has none of it).
///
/// With `BACKSTOP_FAULT_AT_STEP=N` in its environment, backstopd counts the durable
/// steps it makes (fsync(2), rename(2), link(2), symlink(2), unlink(2) of the store, the
/// state and the boot log) from its first mutating control request on, writes
/// `backstopd: durable step K: WHAT` on stderr for each, and kills itself with SIGKILL at
/// the Nth, as a power cut would stop it there. N = 0 counts without killing.
public enum FaultInjection {
    /// The environment variable.
    public static let variable = "BACKSTOP_FAULT_AT_STEP"

    /// Whether this build has it (`backstopd --version` says so).
    #if DEBUG
    public static let isCompiledIn = true
    #else
    public static let isCompiledIn = false
    #endif

    #if DEBUG
    private static let target: Int? = ProcessInfo.processInfo.environment[variable].flatMap { Int($0) }
    private static let armed = Atomic<Bool>(false)
    private static let count = Atomic<Int>(0)
    #endif

    /// Starts counting (called for each mutating control request; only the first counts).
    public static func arm() {
        #if DEBUG
        armed.store(true, ordering: .sequentiallyConsistent)
        #endif
    }

    /// One durable step was made; `what` names it.
    static func step(_ what: @autoclosure () -> String) {
        #if DEBUG
        guard let target, armed.load(ordering: .sequentiallyConsistent) else { return }
        let number = count.add(1, ordering: .sequentiallyConsistent).newValue
        FileHandle.standardError.write(Data("backstopd: durable step \(number): \(what())\n".utf8))
        if number == target { kill(getpid(), SIGKILL) }
        #endif
    }
}
