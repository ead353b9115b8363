import CSystemd
import Dispatch

/// The sd_notify side of the agent, via libsystemd. Works unchanged without a
/// supervisor: with no NOTIFY_SOCKET, sd_notify does nothing and returns 0.
enum ServiceManager {
    /// Sends one sd_notify state assignment such as `READY=1`.
    ///
    /// Failures are ignored: if the supervisor is not listening, the silence
    /// is itself the signal it acts on.
    static func notify(_ state: String) {
        // sd_notify, never the variadic sd_notifyf, which Swift cannot call.
        _ = sd_notify(0, state)
    }

    /// Half the watchdog timeout the supervisor asked for via WATCHDOG_USEC
    /// (and WATCHDOG_PID, if set), or nil when no watchdog is enabled.
    /// Half, as sd_watchdog_enabled(3) recommends, so one late heartbeat is not fatal.
    static func heartbeatInterval() -> DispatchTimeInterval? {
        var timeout: UInt64 = 0
        guard sd_watchdog_enabled(0, &timeout) > 0 else { return nil }
        return .microseconds(Int(clamping: max(timeout / 2, 1)))
    }
}
