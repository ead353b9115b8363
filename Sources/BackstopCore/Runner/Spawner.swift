import CLinux
import Foundation
import SystemPackage

/// A process started by ``Spawner/spawn(_:arguments:environment:descriptors:groupID:)``:
/// backstopd's child, in a session of its own, with a pidfd (pidfd_open(2)) to wait on.
public struct SpawnedProcess: Sendable, Equatable {
    /// Its pid, also its session's and process group's id.
    public var pid: Int32
    /// A close-on-exec pidfd of it, owned by whoever waits: ``ProcessExits/termination(of:)`` closes it.
    public var pidfd: Int32
}

/// Why ``Spawner/spawn(_:arguments:environment:descriptors:groupID:)`` started nothing.
public struct SpawnError: Error, Equatable, Sendable {
    /// The step that failed: in backstopd, or in the child before its program ran.
    public enum Step: Int32, Sendable {
        /// pipe2(2) or clone3(2) in backstopd (EINVAL: too many descriptors).
        case start = 0
        /// setsid(2) in the child.
        case session = 1
        /// setgroups(2) or setresgid(2) in the child.
        case group = 2
        /// Mapping the descriptors in the child (fcntl(2), dup2(2), close_range(2)).
        case descriptors = 3
        /// execve(2): the program could not be executed (ENOENT, EACCES, ENOEXEC, ...).
        case exec = 4
    }

    /// The step that failed.
    public var step: Step
    /// Its errno.
    public var errno: Errno

    /// "execve: Permission denied".
    public var description: String {
        let call = switch step {
        case .start: "clone3"
        case .session: "setsid"
        case .group: "setresgid"
        case .descriptors: "dup2"
        case .exec: "execve"
        }
        return "\(call): \(String(cString: strerror(errno.rawValue)))"
    }
}

/// Starts processes with clone3(2) and a pidfd; in the child only system calls run (no
/// glibc set*id(2) wrapper, which in a forked child of a threaded process waits for threads
/// the child does not have), and a failure before or at the exec comes back as its errno.
public enum Spawner {
    /// The most descriptors a child gets (``spawn(_:arguments:environment:descriptors:groupID:)``'s `descriptors`).
    public static let maximumDescriptors = Int(BACKSTOP_SPAWN_MAXIMUM_DESCRIPTORS)

    /// Starts `path` in a session of its own.
    /// - Parameters:
    ///   - path: the program's path (execve(2): no `PATH` lookup).
    ///   - arguments: its whole argument vector, `argv[0]` included.
    ///   - environment: its whole environment, by name.
    ///   - descriptors: what becomes the child's descriptor 0, 1, 2, ... (a descriptor may
    ///     appear twice; at most ``maximumDescriptors``); every other descriptor is closed at the exec.
    ///   - groupID: the only group the child is in (setresgid(2), no supplementary groups), nil for backstopd's.
    /// - Returns: the child; its signal dispositions are the defaults and its signal mask empty.
    /// - Throws: ``SpawnError``; nothing is left running then (a child that failed was reaped).
    ///
    /// The child is made on ``SpawnThread``, which lives as long as backstopd: a parent-death
    /// signal (PR_SET_PDEATHSIG, which bwrap's `--die-with-parent` sets on itself) fires when
    /// the *thread* that made the process ends (prctl(2)), and the threads of Swift's
    /// concurrency pool end after a few idle seconds.
    public static func spawn(
        _ path: String, arguments: [String], environment: [String: String], descriptors: [Int32], groupID: gid_t? = nil
    ) async throws(SpawnError) -> SpawnedProcess {
        let result = await SpawnThread.shared.perform { () -> Result<SpawnedProcess, SpawnError> in
            var pidfd: Int32 = -1
            var step: Int32 = 0
            let pid = withCStrings(arguments) { argv in
                withCStrings(environment.map { "\($0.key)=\($0.value)" }) { envp in
                    backstop_spawn(path, argv, envp, descriptors, Int32(descriptors.count), groupID.map(Int64.init) ?? -1, &pidfd, &step)
                }
            }
            guard pid > 0 else { return .failure(SpawnError(step: SpawnError.Step(rawValue: step) ?? .start, errno: Errno(rawValue: errno))) }
            return .success(SpawnedProcess(pid: pid, pidfd: pidfd))
        }
        return try result.get()
    }

    /// `strings` as a null-terminated array of C strings, valid inside `body`.
    static func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
        let pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return body(pointers)
    }
}

/// The one thread that makes backstopd's children (``Spawner``): it waits on a condition
/// variable for the next start, never on a timer, and never ends.
final class SpawnThread: @unchecked Sendable {
    /// The one instance of this process.
    static let shared = SpawnThread()

    // @unchecked: `jobs` is only touched with `condition` locked.
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []

    private init() {
        let thread = Thread { [self] in runForever() }
        thread.name = "backstop-spawn"
        thread.start()
    }

    /// Runs `job` on this thread and returns what it returns.
    func perform<T: Sendable>(_ job: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            condition.lock()
            jobs.append { continuation.resume(returning: job()) }
            condition.signal()
            condition.unlock()
        }
    }

    private func runForever() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }
}

/// Tells when processes end, for every process backstopd waits on: one thread blocks in
/// epoll_wait(2) without a timeout on all their pidfds (a pidfd is readable once its process
/// has ended), the timerfds of their deadlines and the status pipes of their sandboxes, so
/// that nothing wakes while nothing ends or expires, however many processes run.
public final class ProcessExits: @unchecked Sendable {
    /// The one instance of this process.
    public static let shared = ProcessExits()

    /// One wait: its descriptor, its timerfd (-1 for none) and who waits.
    private struct Waiter {
        var descriptor: Int32
        var timer: Int32
        var continuation: CheckedContinuation<Bool, Never>
    }

    // @unchecked: `waiting` and `lastWait` are only touched with `lock` held; `epoll` is set once.
    private let lock = NSLock()
    /// By wait number; the descriptor's epoll token is 2 x that number, the timer's 2 x that number + 1.
    private var waiting: [UInt64: Waiter] = [:]
    private var lastWait: UInt64 = 0
    private let epoll: Int32

    private init() {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epoll >= 0, "epoll_create1: \(String(cString: strerror(errno)))")
        let thread = Thread { [self] in watchForever() }
        thread.name = "backstop-exits"
        thread.start()
    }

    /// Returns once `descriptor` is readable: a pidfd once its process has ended (it is not
    /// reaped here), a pipe once it holds data or has no writer left; or once `timeoutSeconds`
    /// (monotonic) have passed, whichever comes first. `descriptor` stays open.
    /// - Returns: true when it is readable (or none epoll can watch); false when the time was
    ///   up first, or no timer could be made or watched (the caller treats it as expired).
    @discardableResult
    public func readable(_ descriptor: Int32, timeoutSeconds: Double? = nil) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            var timer: Int32 = -1
            if let timeoutSeconds {
                timer = backstop_timerfd_once(UInt64(max(0, timeoutSeconds) * 1_000_000_000))
                guard timer >= 0 else { return continuation.resume(returning: false) }
            }
            // Both watched before a report can end the wait (it takes the lock), so that its
            // clean-up finds both.
            // `unwatched`: nil when both are watched, else how the wait ends at once.
            let (number, unwatched) = lock.withLock { () -> (UInt64, Bool?) in
                lastWait += 1
                waiting[lastWait] = Waiter(descriptor: descriptor, timer: timer, continuation: continuation)
                // Not a descriptor epoll can watch: nothing would ever report it.
                guard backstop_epoll_watch_once(epoll, descriptor, lastWait * 2) == 0 else { return (lastWait, true) }
                guard timer < 0 || backstop_epoll_watch_once(epoll, timer, lastWait * 2 + 1) == 0 else { return (lastWait, false) }
                return (lastWait, nil)
            }
            if let ended = unwatched { finish(number, ended: ended) }
        }
    }

    /// Ends wait `number` (once: a second report of the same wait finds nothing).
    private func finish(_ number: UInt64, ended: Bool) {
        guard let waiter = lock.withLock({ waiting.removeValue(forKey: number) }) else { return }
        epoll_ctl(epoll, EPOLL_CTL_DEL, waiter.descriptor, nil)
        if waiter.timer >= 0 {
            epoll_ctl(epoll, EPOLL_CTL_DEL, waiter.timer, nil)
            close(waiter.timer)
        }
        waiter.continuation.resume(returning: ended)
    }

    /// Waits for `process`, backstopd's child, to end, reaps it (waitid(2) with `P_PIDFD`)
    /// and closes its pidfd.
    /// - Returns: how it ended, the core-dump bit included.
    public func termination(of process: SpawnedProcess) async -> Termination {
        await readable(process.pidfd)
        defer { close(process.pidfd) }
        var info = siginfo_t()
        while waitid(idtype_t(rawValue: 3) /* P_PIDFD */, id_t(process.pidfd), &info, WEXITED) != 0, errno == EINTR {}
        let status = info._sifields._sigchld.si_status
        switch info.si_code {
        case Int32(CLD_EXITED): return .exited(code: status)
        case Int32(CLD_DUMPED): return .signaled(signal: status, coreDumped: true)
        default: return .signaled(signal: status, coreDumped: false)
        }
    }

    private func watchForever() {
        while true {
            var token: UInt64 = 0
            guard backstop_epoll_next(epoll, &token) == 1 else { continue }  // EINTR
            finish(token / 2, ended: token % 2 == 0)
        }
    }
}
