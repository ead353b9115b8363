import CSystemd
import Foundation

/// A systemd unit's state as org.freedesktop.systemd1 reports it (org.freedesktop.systemd1(5)).
public struct UnitState: Sendable, Equatable {
    /// `ActiveState`: `active`, `activating`, `deactivating`, `inactive`, `failed`, `reloading`.
    public var activeState: String
    /// `SubState`, e.g. `running`, `dead`, `failed`, `auto-restart`.
    public var subState: String
    /// The service's `Result`: `success`, `exit-code`, `signal`, `core-dump`, `watchdog`, `timeout`, `oom-kill`, ...
    public var result: String
    /// `MainPID`, 0 when none.
    public var mainPID: Int32
    /// `ExecMainCode`: the `si_code` of the main process's end (1 CLD_EXITED, 2 CLD_KILLED, 3 CLD_DUMPED), 0 while it runs.
    public var execMainCode: Int32
    /// `ExecMainStatus`: the exit code or signal number.
    public var execMainStatus: Int32
    /// The object path of the unit's `Job` (the one job queued or running for it), nil when
    /// none; sent in the same change as `ActiveState`, so a stop job is seen with the
    /// `deactivating` it causes.
    public var job: String? = nil
    /// The unit's start command that failed it first (an `ExecStartPre=`, the `ExecStart=`
    /// of a `Type=forking` unit, an `ExecStartPost=`, or the main process itself), nil when
    /// none did or it is not known. Not in systemd's change signals: read over the bus once
    /// the unit failed (``UnitBus/failedCommand(of:)``).
    public var failedCommand: UnitCommandEnd? = nil

    /// Whether the unit runs or is on its way up.
    public var isUp: Bool { ["active", "activating", "reloading"].contains(activeState) }

    /// Why systemd itself could not run the unit's program, nil when it could: its main
    /// process ended with one of the exit codes systemd uses for a unit it failed to set up
    /// (200 `CHDIR` to 243 `CREDENTIALS`: a missing user, a namespace, the exec; systemd.exec(5),
    /// "Process Exit Codes"), or the unit's `Result` is `resources` (no process was made).
    public var setUpFailure: String? {
        if result == "resources" { return "systemd could not allocate what the unit needs (Result=resources)" }
        guard case .exited(let status) = termination, (200...243).contains(status) else { return nil }
        let which = failedCommand.map { " of \($0.setting)=" } ?? ""
        return "systemd could not set the unit up: the exit status \(status)\(which) is systemd's own (systemd.exec(5), Process Exit Codes)"
    }

    /// How the run ended: the end of the ``failedCommand`` when one failed the unit (the main
    /// process, if any, was then stopped by systemd as a consequence), else the main
    /// process's end, from `ExecMainCode` and `ExecMainStatus`; nil when neither is known.
    public var termination: Termination? {
        failedCommand?.termination ?? Termination(siginfoCode: execMainCode, status: execMainStatus)
    }
}

/// A command of a unit that ended unsuccessfully, from the `Exec…` property that lists it
/// (`a(sasbttttuii)`: path, argv, ignore failure, start and exit times, pid, `si_code`, status;
/// org.freedesktop.systemd1(5)).
public struct UnitCommandEnd: Sendable, Equatable {
    /// The setting it comes from: `ExecStartPre`, `ExecStart`, `ExecStartPost`.
    public var setting: String
    /// The program, e.g. `/bin/sh`.
    public var path: String
    /// How it ended.
    public var termination: Termination
    /// When it ended, in µs on CLOCK_MONOTONIC.
    public var exitMonotonicMicroseconds: UInt64

    /// The settings whose commands run while a unit starts, in the order systemd runs them.
    /// `ExecCondition=` is not among them: its failure skips the unit, as a condition does.
    public static let startSettings = ["ExecStartPre", "ExecStart", "ExecStartPost"]

    /// The one command among `ends` that failed the unit: the first to end unsuccessfully (a
    /// clean exit is no failure; what ends after it, such as the main process after a failing
    /// `ExecStartPost=`, was stopped by systemd because of it), nil when none did.
    public static func failing(_ ends: [UnitCommandEnd]) -> UnitCommandEnd? {
        ends.filter { $0.termination != .exited(code: 0) }.min { $0.exitMonotonicMicroseconds < $1.exitMonotonicMicroseconds }
    }
}

extension Termination {
    /// A process's end as systemd reports it (`ExecMainCode`/`ExecMainStatus`, or a command's
    /// code and status): `si_code` 1 `CLD_EXITED` with the exit code, 2 `CLD_KILLED` or 3
    /// `CLD_DUMPED` with the signal; nil for 0 (it has not ended, or never ran).
    init?(siginfoCode code: Int32, status: Int32) {
        switch code {
        case 1: self = .exited(code: status)
        case 2: self = .signaled(signal: status, coreDumped: false)
        case 3: self = .signaled(signal: status, coreDumped: true)
        default: return nil
        }
    }
}

/// An error of a D-Bus call, with sd-bus's error name and message (sd_bus_error(3)).
public struct BusError: Error, CustomStringConvertible, Equatable {
    /// What was being done, e.g. `StartUnit demo.service`.
    public var operation: String
    /// The D-Bus error name, or the errno's text.
    public var message: String
    /// `operation: message`.
    public var description: String { "\(operation): \(message)" }
}

/// A connection to the system bus for talking to systemd about units, through sd-bus
/// (sd-bus(3)). Calls are synchronous and serialized with a lock; sd-bus connections
/// are not thread-safe, so watching happens on a connection of its own (``UnitWatcher``).
public final class UnitBus: @unchecked Sendable {
    // @unchecked: `bus` is only used with `lock` held.
    private var bus: OpaquePointer?
    private let lock = NSLock()

    static let destination = "org.freedesktop.systemd1"
    static let managerPath = "/org/freedesktop/systemd1"
    static let manager = "org.freedesktop.systemd1.Manager"

    /// Connects to systemd (see ``connect()``).
    /// - Throws: ``BusError`` when systemd cannot be reached.
    public init() throws {
        bus = try Self.connect()
    }

    /// systemd's own socket, which it serves to root from early boot on, before the
    /// D-Bus daemon runs (backstopd starts before basic.target, the D-Bus daemon after it).
    static let privateSocket = "/run/systemd/private"

    /// A connection to systemd: its private socket when it is there and we are root
    /// (as systemctl does), else the system bus (sd_bus_open_system(3)).
    /// - Throws: ``BusError``.
    static func connect() throws(BusError) -> OpaquePointer? {
        var bus: OpaquePointer?
        var result: Int32
        if getuid() == 0, access(privateSocket, F_OK) == 0 {
            result = sd_bus_new(&bus)
            if result >= 0 { result = sd_bus_set_address(bus, "unix:path=" + privateSocket) }
            if result >= 0 { result = sd_bus_start(bus) }
        } else {
            result = sd_bus_open_system(&bus)
        }
        guard result >= 0 else {
            sd_bus_unref(bus)
            throw BusError(operation: "connecting to systemd", message: String(cString: strerror(-result)))
        }
        return bus
    }

    deinit {
        sd_bus_flush_close_unref(bus)
    }

    /// The unit's object path (Manager.LoadUnit).
    /// - Throws: ``BusError``.
    public func loadUnit(_ name: String) throws(BusError) -> String {
        try call("LoadUnit", [name], operation: "LoadUnit \(name)", readsObjectPath: true) ?? ""
    }

    /// The unit's current state (Manager.LoadUnit, then its properties).
    /// - Throws: ``BusError``.
    public func unitState(_ name: String) throws(BusError) -> UnitState {
        let path = try loadUnit(name)
        return try withBus { bus throws(BusError) in try Self.state(bus: bus, path: path) }
    }

    /// Manager.StartUnit with mode `replace`; returns once the job is queued.
    /// - Returns: the job's object path, which ``UnitEvent/jobRemoved(job:result:state:)`` names when it ends.
    /// - Throws: ``BusError``.
    public func startUnit(_ name: String) throws(BusError) -> String {
        try call("StartUnit", [name, "replace"], operation: "StartUnit \(name)", readsObjectPath: true) ?? ""
    }

    /// Manager.StopUnit with mode `replace`.
    /// - Throws: ``BusError``.
    public func stopUnit(_ name: String) throws(BusError) {
        _ = try call("StopUnit", [name, "replace"], operation: "StopUnit \(name)")
    }

    /// Manager.ResetFailedUnit: clears the failed state and the start-rate counter.
    /// - Throws: ``BusError`` (a unit that is not failed is no error).
    public func resetFailedUnit(_ name: String) throws(BusError) {
        _ = try call("ResetFailedUnit", [name], operation: "ResetFailedUnit \(name)")
    }

    /// Manager.KillUnit: sends `signal` to the unit's main process only.
    /// - Throws: ``BusError``.
    public func killMainProcess(_ name: String, signal: Int32) throws(BusError) {
        _ = try call("KillUnit", [name, "main"], int32: signal, operation: "KillUnit \(name)")
    }

    /// Manager.Reload: systemd re-reads its unit files (daemon-reload); returns when done.
    /// - Throws: ``BusError``.
    public func reload() throws(BusError) {
        _ = try call("Reload", [], operation: "Reload")
    }

    /// The units whose stop systemd carries over to unit `name`: those in its `Requires=`,
    /// `BindsTo=`, `Requisite=` and `PartOf=` (the Unit properties of the same names,
    /// org.freedesktop.systemd1(5); for a socket-activated service, its socket).
    /// - Throws: ``BusError``.
    public func stopPropagatingUnits(of name: String) throws(BusError) -> [String] {
        let path = try loadUnit(name)
        return try withBus { bus throws(BusError) in
            var units: [String] = []
            for member in ["Requires", "BindsTo", "Requisite", "PartOf"] {
                var error = sd_bus_error()
                defer { sd_bus_error_free(&error) }
                var list: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
                let result = sd_bus_get_property_strv(bus, Self.destination, path, Self.unitInterface, member, &error, &list)
                guard result >= 0 else { throw Self.busError("reading \(member) of \(name)", result, error) }
                defer { free(list) }
                var index = 0
                while let entry = list?[index] {
                    let unit = String(cString: entry)
                    if !units.contains(unit) { units.append(unit) }
                    free(entry)
                    index += 1
                }
            }
            return units
        }
    }

    /// Unit `name`'s `ActiveState` and the type of the job queued or running for it
    /// (`JobType` of its `Job`: `start`, `stop`, `restart`, ...; nil when it has none).
    /// - Throws: ``BusError``.
    public func activeStateAndJob(_ name: String) throws(BusError) -> (activeState: String, jobType: String?) {
        let path = try loadUnit(name)
        return try withBus { bus throws(BusError) in
            let activeState = try Self.stringProperty(bus: bus, path: path, interface: Self.unitInterface, member: "ActiveState")
            var error = sd_bus_error()
            defer { sd_bus_error_free(&error) }
            var reply: OpaquePointer?
            let result = sd_bus_get_property(bus, Self.destination, path, Self.unitInterface, "Job", &error, &reply, "(uo)")
            guard result >= 0 else { throw Self.busError("reading Job of \(name)", result, error) }
            defer { sd_bus_message_unref(reply) }
            var id: UInt32 = 0
            var job: UnsafePointer<CChar>?
            guard sd_bus_message_enter_container(reply, CChar(UInt8(ascii: "r")), "uo") > 0,
                sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "u")), &id) >= 0,
                sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "o")), &job) >= 0, let job
            else { throw BusError(operation: "reading Job of \(name)", message: "malformed reply") }
            guard id != 0 else { return (activeState, nil) }
            // The job may end between the two reads: then there is none.
            let jobType = try? Self.stringProperty(bus: bus, path: String(cString: job), interface: "org.freedesktop.systemd1.Job", member: "JobType")
            return (activeState, jobType)
        }
    }

    /// A `…TimestampMonotonic` property of unit `name` (org.freedesktop.systemd1(5)), in µs
    /// on CLOCK_MONOTONIC, 0 when it never happened: `ConditionTimestampMonotonic` (when
    /// systemd last checked its `Condition…=` settings, which it does at every start, also
    /// one it then skips), `ActiveExitTimestampMonotonic` (when it last began to stop),
    /// `InactiveEnterTimestampMonotonic` (when it was last down).
    /// - Throws: ``BusError``.
    public func monotonicMicroseconds(_ property: String, of name: String) throws(BusError) -> UInt64 {
        let path = try loadUnit(name)
        return try withBus { bus throws(BusError) in
            var error = sd_bus_error()
            defer { sd_bus_error_free(&error) }
            var value: UInt64 = 0
            let result = sd_bus_get_property_trivial(
                bus, Self.destination, path, Self.unitInterface, property, &error, CChar(UInt8(ascii: "t")), &value)
            guard result >= 0 else { throw Self.busError("reading \(property) of \(name)", result, error) }
            return value
        }
    }

    static let unitInterface = "org.freedesktop.systemd1.Unit"

    /// The command of unit `name` that failed its start (``UnitCommandEnd/failing(_:)`` among
    /// those of ``UnitCommandEnd/startSettings`` that ended since the unit last left `inactive`
    /// (systemd records that just after it forks the first command, so by start time they would not match),
    /// leaving out those whose failure is ignored, `-` in the unit file); nil when none did.
    /// - Throws: ``BusError``.
    public func failedCommand(of name: String) throws(BusError) -> UnitCommandEnd? {
        let path = try loadUnit(name)
        let activationMicroseconds = try monotonicMicroseconds("InactiveExitTimestampMonotonic", of: name)
        return try withBus { bus throws(BusError) in
            var ends: [UnitCommandEnd] = []
            for setting in UnitCommandEnd.startSettings {
                var error = sd_bus_error()
                defer { sd_bus_error_free(&error) }
                var reply: OpaquePointer?
                let result = sd_bus_get_property(
                    bus, Self.destination, path, "org.freedesktop.systemd1.Service", setting, &error, &reply, "a(sasbttttuii)")
                guard result >= 0 else { throw Self.busError("reading \(setting) of \(name)", result, error) }
                defer { sd_bus_message_unref(reply) }
                guard sd_bus_message_enter_container(reply, CChar(UInt8(ascii: "a")), "(sasbttttuii)") >= 0 else {
                    throw BusError(operation: "reading \(setting) of \(name)", message: "malformed reply")
                }
                while sd_bus_message_enter_container(reply, CChar(UInt8(ascii: "r")), "sasbttttuii") > 0 {
                    var program: UnsafePointer<CChar>?
                    var ignoresFailure: Int32 = 0
                    var times: [UInt64] = [0, 0, 0, 0]
                    var pid: UInt32 = 0
                    var code: Int32 = 0
                    var status: Int32 = 0
                    var read = sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "s")), &program) >= 0
                        && sd_bus_message_skip(reply, "as") >= 0
                        && sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "b")), &ignoresFailure) >= 0
                    for index in times.indices where read {
                        read = sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "t")), &times[index]) >= 0
                    }
                    read = read && sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "u")), &pid) >= 0
                        && sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "i")), &code) >= 0
                        && sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "i")), &status) >= 0
                        && sd_bus_message_exit_container(reply) >= 0
                    guard read, let program else { throw BusError(operation: "reading \(setting) of \(name)", message: "malformed reply") }
                    // times: start realtime, start monotonic, exit realtime, exit monotonic.
                    if ignoresFailure == 0, times[3] >= activationMicroseconds, let termination = Termination(siginfoCode: code, status: status) {
                        ends.append(UnitCommandEnd(
                            setting: setting, path: String(cString: program), termination: termination, exitMonotonicMicroseconds: times[3]))
                    }
                }
            }
            return UnitCommandEnd.failing(ends)
        }
    }

    /// Reads a unit's state on `bus`, property by property (sd_bus_get_property(3)); the
    /// caller owns the connection.
    /// - Throws: ``BusError``.
    static func state(bus: OpaquePointer?, path: String) throws(BusError) -> UnitState {
        func string(_ interface: String, _ member: String) throws(BusError) -> String {
            try stringProperty(bus: bus, path: path, interface: interface, member: member)
        }
        func number(_ interface: String, _ member: String, type: Character) throws(BusError) -> Int64 {
            var error = sd_bus_error()
            defer { sd_bus_error_free(&error) }
            var value: Int64 = 0
            let result = sd_bus_get_property_trivial(
                bus, destination, path, interface, member, &error, CChar(type.asciiValue!), &value)
            guard result >= 0 else { throw busError("reading \(member)", result, error) }
            // 'i' and 'u' fill the first four bytes (little-endian here); read them back at that width.
            return type == "i" ? Int64(Int32(truncatingIfNeeded: value)) : Int64(UInt32(truncatingIfNeeded: value))
        }
        let unit = "org.freedesktop.systemd1.Unit"
        let service = "org.freedesktop.systemd1.Service"
        return UnitState(
            activeState: try string(unit, "ActiveState"), subState: try string(unit, "SubState"),
            result: try string(service, "Result"), mainPID: Int32(try number(service, "MainPID", type: "u")),
            execMainCode: Int32(try number(service, "ExecMainCode", type: "i")),
            execMainStatus: Int32(try number(service, "ExecMainStatus", type: "i")))
    }

    /// Calls a Manager method with string arguments (and an optional int32 after them).
    /// - Returns: the reply's object path when `readsObjectPath`.
    private func call(
        _ member: String, _ strings: [String], int32: Int32? = nil, operation: String, readsObjectPath: Bool = false
    ) throws(BusError) -> String? {
        try withBus { bus throws(BusError) in
            try Self.call(bus: bus, member, strings, int32: int32, operation: operation, readsObjectPath: readsObjectPath)
        }
    }

    /// Runs `body` with the connection, locked; once more on a new connection when systemd
    /// closed the old one (it re-executed itself).
    func withBus<R>(_ body: (OpaquePointer?) throws(BusError) -> R) throws(BusError) -> R {
        lock.lock()
        defer { lock.unlock() }
        do {
            return try body(bus)
        } catch where sd_bus_is_open(bus) <= 0 {
            sd_bus_flush_close_unref(bus)
            bus = nil
            bus = try Self.connect()
            return try body(bus)
        }
    }

    /// Manager's `SystemState` (`running`, `degraded`, `stopping`, ...; org.freedesktop.systemd1(5)).
    /// - Throws: ``BusError``.
    public func systemState() throws(BusError) -> String {
        lock.lock()
        defer { lock.unlock() }
        return try Self.stringProperty(bus: bus, path: Self.managerPath, interface: Self.manager, member: "SystemState")
    }

    /// Reads a string property of object `path` on `bus`, which the caller owns (sd_bus_get_property_string(3)).
    static func stringProperty(bus: OpaquePointer?, path: String, interface: String, member: String) throws(BusError) -> String {
        var error = sd_bus_error()
        defer { sd_bus_error_free(&error) }
        var value: UnsafeMutablePointer<CChar>?
        let result = sd_bus_get_property_string(bus, destination, path, interface, member, &error, &value)
        guard result >= 0, let value else { throw busError("reading \(member)", result, error) }
        defer { free(value) }
        return String(cString: value)
    }

    /// Calls a Manager method on `bus`, which the caller owns, with string arguments (and an optional int32 after them).
    static func call(
        bus: OpaquePointer?, _ member: String, _ strings: [String], int32: Int32? = nil, operation: String,
        readsObjectPath: Bool = false
    ) throws(BusError) -> String? {
        try call(bus: bus, member, operation: operation, readsObjectPath: readsObjectPath) { message throws(BusError) in
            for string in strings {
                let result = string.withCString { sd_bus_message_append_basic(message, CChar(UInt8(ascii: "s")), $0) }
                guard result >= 0 else { throw Self.busError(operation, result, sd_bus_error()) }
            }
            if var value = int32 {
                let result = sd_bus_message_append_basic(message, CChar(UInt8(ascii: "i")), &value)
                guard result >= 0 else { throw Self.busError(operation, result, sd_bus_error()) }
            }
        }
    }

    /// Calls a Manager method on `bus`, which the caller owns, with the arguments `appendArguments` adds to the message.
    /// - Returns: the reply's object path when `readsObjectPath`.
    static func call(
        bus: OpaquePointer?, _ member: String, operation: String, readsObjectPath: Bool,
        appendArguments: (OpaquePointer?) throws(BusError) -> Void
    ) throws(BusError) -> String? {
        var message: OpaquePointer?
        var result = sd_bus_message_new_method_call(bus, &message, Self.destination, Self.managerPath, Self.manager, member)
        guard result >= 0 else { throw Self.busError(operation, result, sd_bus_error()) }
        defer { sd_bus_message_unref(message) }
        try appendArguments(message)
        var error = sd_bus_error()
        defer { sd_bus_error_free(&error) }
        var reply: OpaquePointer?
        result = sd_bus_call(bus, message, 0, &error, &reply)
        guard result >= 0 else { throw Self.busError(operation, result, error) }
        defer { sd_bus_message_unref(reply) }
        guard readsObjectPath else { return nil }
        var path: UnsafePointer<CChar>?
        result = sd_bus_message_read_basic(reply, CChar(UInt8(ascii: "o")), &path)
        guard result >= 0, let path else { throw Self.busError(operation, result, sd_bus_error()) }
        return String(cString: path)
    }

    static func busError(_ operation: String, _ result: Int32, _ error: sd_bus_error) -> BusError {
        if let message = error.message { return BusError(operation: operation, message: String(cString: message)) }
        if let name = error.name { return BusError(operation: operation, message: String(cString: name)) }
        return BusError(operation: operation, message: String(cString: strerror(-result)))
    }
}

/// What a ``UnitWatcher`` reports about its unit, in the order systemd sent it.
public enum UnitEvent: Sendable, Equatable {
    /// The unit's state after a change (or as asked for by ``UnitWatcher/refresh()``).
    case changed(UnitState)
    /// A job for the unit ended: Manager's `JobRemoved(u id, o job, s unit, s result)`, with
    /// `result` one of `done`, `canceled`, `timeout`, `failed`, `dependency`, `skipped`, ...
    /// (org.freedesktop.systemd1(5)), and the unit's `state` as the job left it. A start whose
    /// unit then is not up was refused: a condition not met (`done`), a unit it requires
    /// failed (`dependency`), and so on.
    case jobRemoved(job: String, result: String, state: UnitState)
    /// The connection to systemd was lost (`systemctl daemon-reexec`, a systemd upgrade);
    /// the watcher reconnects, reads the unit's state afresh and reports it as a change.
    case disconnected(reason: String)
}

/// Watches one unit: a connection of its own, matches on the unit's `PropertiesChanged`
/// signals and on the Manager's `JobRemoved` (sd_bus_match_signal(3)), and a thread that
/// sleeps in poll(2) on the connection and on a pipe for ``refresh()``: no polling.
///
/// The state is pieced together from the signals themselves, in their order: systemd
/// unloads an inactive unit nobody refers to, and reading it then loads it afresh with
/// its history gone. systemd sends a change first for the service interface, then for the
/// unit interface "so that clients may rely on this order to get atomic behavior"
/// (src/core/dbus-unit.c), so a state is reported after the unit interface's change. It
/// also flushes a unit's pending change before it sends a job's `JobRemoved`
/// (src/core/dbus-job.c), so a job's end is reported after the state it left.
public final class UnitWatcher: @unchecked Sendable {
    // @unchecked: `bus`, the slots and `snapshot` are used only on the watcher's thread after init.
    private var bus: OpaquePointer?
    private var slot: OpaquePointer?
    private var jobSlot: OpaquePointer?
    private let path: String
    private let unit: String
    /// A pipe whose read end wakes the thread for ``refresh()``.
    private let wakeup: (read: Int32, write: Int32)
    private let onEvent: @Sendable (UnitEvent) -> Void
    private var snapshot = UnitState(
        activeState: "inactive", subState: "dead", result: "success", mainPID: 0, execMainCode: 0, execMainStatus: 0)

    /// Starts watching `unit` (e.g. `clamav-daemon.service`) at object `path`; `onEvent`
    /// runs on the watcher's thread, once per change, per ended job and per ``refresh()``, in order.
    /// - Throws: ``BusError`` when the bus or the matches cannot be set up.
    public init(unit: String, path: String, onEvent: @escaping @Sendable (UnitEvent) -> Void) throws {
        self.unit = unit
        self.path = path
        self.onEvent = onEvent
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw BusError(operation: "pipe", message: String(cString: strerror(errno))) }
        for end in ends {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, O_NONBLOCK)
        }
        wakeup = (ends[0], ends[1])
        try connect()
        let thread = Thread { [self] in run() }
        thread.name = "backstop-unit-watch"
        thread.start()
    }

    /// Connects, subscribes to systemd's signals, matches the unit's and reads its state.
    /// - Throws: ``BusError``; the connection is closed again then.
    private func connect() throws(BusError) {
        bus = try UnitBus.connect()
        do {
            try subscribe()
        } catch {
            disconnect()
            throw error
        }
    }

    private func subscribe() throws(BusError) {
        // Manager.Subscribe: without it systemd does not send unit signals to this client.
        _ = try UnitBus.call(bus: bus, "Subscribe", [], operation: "Subscribe")
        if let state = try? UnitBus.state(bus: bus, path: path) { snapshot = state }
        // No sender in the match: on systemd's private socket messages carry none.
        let result = sd_bus_match_signal(
            bus, &slot, nil, path, "org.freedesktop.DBus.Properties", "PropertiesChanged",
            { message, userdata, _ in
                let watcher = Unmanaged<UnitWatcher>.fromOpaque(userdata!).takeUnretainedValue()
                watcher.received(message)
                return 0
            }, Unmanaged.passUnretained(self).toOpaque())
        guard result >= 0 else { throw BusError(operation: "watching \(path)", message: String(cString: strerror(-result))) }
        let jobs = sd_bus_match_signal(
            bus, &jobSlot, nil, UnitBus.managerPath, UnitBus.manager, "JobRemoved",
            { message, userdata, _ in
                let watcher = Unmanaged<UnitWatcher>.fromOpaque(userdata!).takeUnretainedValue()
                watcher.jobRemoved(message)
                return 0
            }, Unmanaged.passUnretained(self).toOpaque())
        guard jobs >= 0 else { throw BusError(operation: "watching jobs", message: String(cString: strerror(-jobs))) }
    }

    private func disconnect() {
        slot = sd_bus_slot_unref(slot)
        jobSlot = sd_bus_slot_unref(jobSlot)
        bus = sd_bus_flush_close_unref(bus)
    }

    /// Asks for the current state to be reported, after every change already received
    /// (a start of a unit that is up already changes nothing, so no signal tells it).
    /// The state is the one read when watching began, updated by every signal since.
    public func refresh() {
        var one: UInt8 = 1
        _ = write(wakeup.write, &one, 1)
    }

    private func received(_ message: OpaquePointer?) {
        if Self.merge(message, into: &snapshot) == "org.freedesktop.systemd1.Unit" { onEvent(.changed(snapshot)) }
    }

    /// `JobRemoved(u id, o job, s unit, s result)`: reported when it is about this unit.
    private func jobRemoved(_ message: OpaquePointer?) {
        var id: UInt32 = 0
        var job: UnsafePointer<CChar>?
        var name: UnsafePointer<CChar>?
        var result: UnsafePointer<CChar>?
        guard sd_bus_message_read_basic(message, CChar(UInt8(ascii: "u")), &id) >= 0,
            sd_bus_message_read_basic(message, CChar(UInt8(ascii: "o")), &job) >= 0, let job,
            sd_bus_message_read_basic(message, CChar(UInt8(ascii: "s")), &name) >= 0, let name,
            sd_bus_message_read_basic(message, CChar(UInt8(ascii: "s")), &result) >= 0, let result,
            String(cString: name) == unit
        else { return }
        onEvent(.jobRemoved(job: String(cString: job), result: String(cString: result), state: snapshot))
    }

    /// Serves the connection; when it is lost, reconnects (after 0.1 s, doubling to 5 s:
    /// systemd's socket is back within moments of a re-exec) and reports the state read afresh.
    /// Stops watching: the thread disconnects and ends, and no event follows (the unit is
    /// no longer supervised, say after a reload removed its agent).
    public func close() {
        var stop = Self.stopByte
        _ = write(wakeup.write, &stop, 1)
    }

    /// What ``close()`` writes on the wakeup pipe (``refresh()`` writes 1).
    private static let stopByte: UInt8 = 0

    private func run() {
        while true {
            guard let reason = serve() else {
                disconnect()
                Foundation.close(wakeup.read)
                Foundation.close(wakeup.write)
                return
            }
            disconnect()
            onEvent(.disconnected(reason: reason))
            var delaySeconds = 0.1
            while true {
                Thread.sleep(forTimeInterval: delaySeconds)
                do {
                    try connect()
                    break
                } catch {
                    delaySeconds = min(delaySeconds * 2, 5)
                }
            }
            onEvent(.changed(snapshot))
        }
    }

    /// Processes the connection's messages until it fails or the watcher is closed.
    /// - Returns: why it ended; nil when ``close()`` ended it.
    private func serve() -> String? {
        let busDescriptor = sd_bus_get_fd(bus)
        while true {
            var result = sd_bus_process(bus, nil)
            while result > 0 { result = sd_bus_process(bus, nil) }
            if result < 0 { return String(cString: strerror(-result)) }
            var descriptors = [
                pollfd(fd: busDescriptor, events: Int16(truncatingIfNeeded: sd_bus_get_events(bus)), revents: 0),
                pollfd(fd: wakeup.read, events: Int16(POLLIN), revents: 0),
            ]
            // sd_bus_get_timeout(3): an absolute CLOCK_MONOTONIC deadline in µs, UINT64_MAX for none.
            var deadline = UInt64.max
            _ = sd_bus_get_timeout(bus, &deadline)
            let milliseconds = deadline == UInt64.max
                ? -1 : Int32(clamping: (deadline > KernelLog.monotonicMicroseconds() ? deadline - KernelLog.monotonicMicroseconds() : 0) / 1000)
            guard poll(&descriptors, 2, milliseconds) >= 0 || errno == EINTR else { return String(cString: strerror(errno)) }
            if descriptors[1].revents & Int16(POLLIN) != 0 {
                var drained = [UInt8](repeating: 1, count: 64)
                let count = read(wakeup.read, &drained, drained.count)
                if count > 0, drained[..<count].contains(Self.stopByte) { return nil }
                // The state as the signals so far tell it. Not a fresh read: signals that came
                // before its reply would be processed after it and turn the state back.
                onEvent(.changed(snapshot))
            }
        }
    }

    /// Applies a `PropertiesChanged(s interface, a{sv} changed, as invalidated)` signal
    /// (D-Bus specification, org.freedesktop.DBus.Properties) to `state`.
    /// - Returns: the interface the change is about.
    @discardableResult
    static func merge(_ message: OpaquePointer?, into state: inout UnitState) -> String? {
        let string = CChar(UInt8(ascii: "s"))
        var interface: UnsafePointer<CChar>?
        guard sd_bus_message_read_basic(message, string, &interface) >= 0, let interface,
            sd_bus_message_enter_container(message, CChar(UInt8(ascii: "a")), "{sv}") > 0
        else { return nil }
        while sd_bus_message_enter_container(message, CChar(UInt8(ascii: "e")), "sv") > 0 {
            var key: UnsafePointer<CChar>?
            var type: CChar = 0
            var contents: UnsafePointer<CChar>?
            guard sd_bus_message_read_basic(message, string, &key) >= 0, let key,
                sd_bus_message_peek_type(message, &type, &contents) >= 0, let contents
            else { break }
            let signature = String(cString: contents)
            guard sd_bus_message_enter_container(message, CChar(UInt8(ascii: "v")), contents) > 0 else { break }
            var text: UnsafePointer<CChar>?
            var number: UInt64 = 0
            switch signature {
            case "s": sd_bus_message_read_basic(message, string, &text)
            case "i", "u": sd_bus_message_read_basic(message, contents.pointee, &number)
            case "(uo)":
                // Job: (id, path), id 0 when there is none.
                if sd_bus_message_enter_container(message, CChar(UInt8(ascii: "r")), "uo") > 0 {
                    sd_bus_message_read_basic(message, CChar(UInt8(ascii: "u")), &number)
                    sd_bus_message_read_basic(message, CChar(UInt8(ascii: "o")), &text)
                    sd_bus_message_exit_container(message)
                }
            default: sd_bus_message_skip(message, contents)
            }
            switch String(cString: key) {
            case "ActiveState": state.activeState = text.map { String(cString: $0) } ?? state.activeState
            case "SubState": state.subState = text.map { String(cString: $0) } ?? state.subState
            case "Result": state.result = text.map { String(cString: $0) } ?? state.result
            case "MainPID": state.mainPID = Int32(truncatingIfNeeded: number)
            case "ExecMainCode": state.execMainCode = Int32(truncatingIfNeeded: number)
            case "ExecMainStatus": state.execMainStatus = Int32(truncatingIfNeeded: number)
            case "Job": state.job = number == 0 ? nil : text.map { String(cString: $0) }
            default: break
            }
            sd_bus_message_exit_container(message)
            sd_bus_message_exit_container(message)
        }
        sd_bus_message_exit_container(message)
        return String(cString: interface)
    }
}

/// A value of a transient unit's property, by its D-Bus type (org.freedesktop.systemd1(5),
/// "Properties" of the Service, Exec and Resource-control interfaces).
public enum BusValue: Sendable, Equatable {
    /// `s`
    case string(String)
    /// `b`
    case bool(Bool)
    /// `t`
    case uint64(UInt64)
    /// `i`
    case int32(Int32)
    /// `as`
    case strings([String])
    /// `au`: process ids, as a scope's PIDs=.
    case pids([UInt32])
    /// `(bas)`: a list that allows (true) or denies (false), as SystemCallFilter= and RestrictAddressFamilies=.
    case list(allow: Bool, [String])
    /// `a(sasb)`: one command line, as ExecStart=.
    case command(path: String, arguments: [String])

    var signature: String {
        switch self {
        case .string: "s"
        case .bool: "b"
        case .uint64: "t"
        case .int32: "i"
        case .strings: "as"
        case .pids: "au"
        case .list: "(bas)"
        case .command: "a(sasb)"
        }
    }
}

extension UnitBus {
    /// Manager.StartTransientUnit with mode `replace` and no auxiliary units: a unit made
    /// from `properties` alone, gone once it is inactive (or reset after failing).
    /// - Returns: the start job's object path.
    /// - Throws: ``BusError`` with systemd's reason (an unknown property, a bad value, a unit of that name already loaded).
    public func startTransientUnit(_ name: String, properties: [(String, BusValue)]) throws(BusError) -> String {
        let operation = "StartTransientUnit \(name)"
        return try withBus { bus throws(BusError) in
            try Self.call(bus: bus, "StartTransientUnit", operation: operation, readsObjectPath: true) { message throws(BusError) in
                func check(_ value: Int32) throws(BusError) {
                    guard value >= 0 else { throw Self.busError(operation, value, sd_bus_error()) }
                }
                func append(_ type: Character, _ text: String) throws(BusError) {
                    try check(text.withCString { sd_bus_message_append_basic(message, CChar(type.asciiValue!), $0) })
                }
                /// A fixed-size basic value (`b` as an int32, `t`, `i`, `u`).
                func append<Value: FixedWidthInteger>(_ type: Character, value: Value) throws(BusError) {
                    try check(withUnsafeBytes(of: value) { sd_bus_message_append_basic(message, CChar(type.asciiValue!), $0.baseAddress) })
                }
                func open(_ type: Character, _ contents: String) throws(BusError) {
                    try check(sd_bus_message_open_container(message, CChar(type.asciiValue!), contents))
                }
                func close() throws(BusError) { try check(sd_bus_message_close_container(message)) }
                func strings(_ list: [String]) throws(BusError) {
                    try open("a", "s")
                    for item in list { try append("s", item) }
                    try close()
                }
                try append("s", name)
                try append("s", "replace")
                try open("a", "(sv)")
                for (key, value) in properties {
                    try open("r", "sv")
                    try append("s", key)
                    try open("v", value.signature)
                    switch value {
                    case .string(let text): try append("s", text)
                    case .bool(let flag): try append("b", value: Int32(flag ? 1 : 0))
                    case .uint64(let number): try append("t", value: number)
                    case .int32(let number): try append("i", value: number)
                    case .strings(let list): try strings(list)
                    case .pids(let pids):
                        try open("a", "u")
                        for pid in pids { try append("u", value: pid) }
                        try close()
                    case .list(let allow, let list):
                        try open("r", "bas")
                        try append("b", value: Int32(allow ? 1 : 0))
                        try strings(list)
                        try close()
                    case .command(let path, let arguments):
                        try open("a", "(sasb)")
                        try open("r", "sasb")
                        try append("s", path)
                        try strings(arguments)
                        try append("b", value: Int32(0))  // ignore failure: no
                        try close()
                        try close()
                    }
                    try close()
                    try close()
                }
                try close()
                try open("a", "(sa(sv))")
                try close()
            } ?? ""
        }
    }
}
