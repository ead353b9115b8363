import CLinux
import Foundation

/// Makes backstopd a child subreaper and reaps the children it did not start.
///
/// With `PR_SET_CHILD_SUBREAPER` (prctl(2)) a process that an agent leaves behind
/// when it forks into the background is re-parented to backstopd instead of to PID 1,
/// so it stays visible and can be stopped with its agent. Such adopted children are
/// reaped here when they end. The processes backstopd starts itself (agents, probes)
/// are reaped through their pidfds (``ProcessExits``); this reaper never touches
/// them: it peeks with `waitid(P_ALL, WNOWAIT)` and reaps only a pid it does not
/// know, and only while no start is half-way (a fresh child not yet registered).
/// One thread blocks in waitid(2): no polling, no SIGCHLD handler.
public final class ChildReaper: @unchecked Sendable {
    /// The one reaper of this process.
    public static let shared = ChildReaper()

    // @unchecked: every field below is read and written with `condition` locked.
    private let condition = NSCondition()
    private var known: Set<Int32> = []
    private var startsInProgress = 0
    private var started = false
    private var changes = 0
    private var adoptedReaped: (@Sendable (Int32) -> Void)?

    private init() {}

    /// Makes this process a child subreaper and starts the reaping thread (once).
    /// - Parameter onReaped: called on the reaper's thread with each adopted child it reaped.
    /// - Throws: `POSIXError` when prctl(2) fails.
    public func start(onReaped: @escaping @Sendable (Int32) -> Void) throws {
        guard backstop_become_child_subreaper() == 0 else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EPERM)
        }
        condition.lock()
        defer { condition.unlock() }
        adoptedReaped = onReaped
        guard !started else { return }
        started = true
        let thread = Thread { [self] in reapForever() }
        thread.name = "backstop-reaper"
        thread.start()
    }

    /// A process is about to be started by this process; call ``startEnded(pid:)`` after.
    func startBegins() {
        update { $0.startsInProgress += 1 }
    }

    /// The start announced by ``startBegins()`` ended: `pid` is the new child, nil when none was made.
    func startEnded(pid: Int32?) {
        update {
            $0.startsInProgress -= 1
            if let pid { $0.known.insert(pid) }
        }
    }

    /// A child this process started has been reaped by its starter.
    func reapedByStarter(_ pid: Int32) {
        update { _ = $0.known.remove(pid) }
    }

    /// Whether `pid` is a child this process started and has not reaped yet.
    func isKnown(_ pid: Int32) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return known.contains(pid)
    }

    private func update(_ change: (ChildReaper) -> Void) {
        condition.lock()
        change(self)
        changes += 1
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until something changed since `seen` (a start, an end, a reap by its starter).
    private func waitForChange(since seen: Int) {
        condition.lock()
        while changes == seen { condition.wait() }
        condition.unlock()
    }

    private func reapForever() {
        while true {
            condition.lock()
            let seen = changes
            condition.unlock()
            var info = siginfo_t()
            if waitid(P_ALL, 0, &info, WEXITED | WNOWAIT) != 0 {
                if errno == EINTR { continue }
                // ECHILD: no children now; the next start makes one.
                waitForChange(since: seen)
                continue
            }
            let pid = info._sifields._sigchld.si_pid
            condition.lock()
            let mine = known.contains(pid) || startsInProgress > 0
            condition.unlock()
            if mine {
                // Its starter reaps it (or may be about to register it): wait for that.
                waitForChange(since: seen)
                continue
            }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                condition.lock()
                let callback = adoptedReaped
                condition.unlock()
                callback?(pid)
            }
        }
    }
}
