import Foundation
import TOMLKit

extension Configuration {
    /// Reads and validates the TOML file at `path`. In a program that answers the
    /// ``TOMLProbe`` (backstopd, backstopctl), the text is first parsed in a child process,
    /// so that TOML on which TOMLKit's parser aborts is an error here, not the end of this process.
    /// - Throws: ``ConfigurationError`` naming the file, the line (when it can be
    ///   found) and the key for: unreadable files, TOML syntax errors (position from
    ///   toml++ through TOMLKit), unknown keys, wrong types, duplicate or malformed
    ///   agent names, a missing or empty `exec`, and out-of-range numbers.
    public static func load(path: String) throws(ConfigurationError) -> Configuration {
        try parse(try source(path: path), path: path)
    }

    /// The text of the configuration file at `path`.
    /// - Throws: ``ConfigurationError`` when it is missing, a directory or another non-regular
    ///   file (a FIFO would block the reader), or unreadable (stat(2)'s reason, e.g. a symlink loop).
    public static func source(path: String) throws(ConfigurationError) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else {
            let message = errno == ENOENT ? "does not exist" : String(cString: strerror(errno))
            throw ConfigurationError(path: path, line: nil, key: nil, message: message)
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw ConfigurationError(path: path, line: nil, key: nil, message: "is a directory, not a configuration file")
        default: throw ConfigurationError(path: path, line: nil, key: nil, message: "is not a regular file")
        }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigurationError(path: path, line: nil, key: nil, message: "cannot read the file: \(error.localizedDescription)")
        }
        for (index, line) in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated()
        where String(validating: line, as: UTF8.self) == nil {
            throw ConfigurationError(path: path, line: index + 1, key: nil, message: "TOML syntax: not valid UTF-8, which TOML requires")
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Validates TOML text as if it were read from `path` (used by ``load(path:)`` and tests).
    /// - Throws: ``ConfigurationError`` as ``load(path:)`` does.
    public static func parse(_ source: String, path: String) throws(ConfigurationError) -> Configuration {
        if let nul = source.utf8.firstIndex(of: 0) {
            let line = source.utf8[..<nul].reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
            throw ConfigurationError(
                path: path, line: line, key: nil,
                message: "TOML syntax: a NUL byte, which TOML allows nowhere: the file is damaged (a power cut during a write leaves zero-filled blocks); restore it")
        }
        if let finding = TOMLAbortGuard.finding(in: source) {
            throw ConfigurationError(path: path, line: finding.line, key: nil, message: "TOML syntax: \(finding.message)")
        }
        if let failure = TOMLProbe.failure(parsing: source) {
            throw ConfigurationError(
                path: path, line: nil, key: nil,
                message: "TOML syntax: the file is malformed in a way that makes TOMLKit's parser abort (\(failure)); check its syntax")
        }
        let root: TOMLTable
        do {
            root = try TOMLTable(string: source)
        } catch let error as TOMLParseError {
            throw ConfigurationError(path: path, line: error.source.begin.line, key: nil, message: "TOML syntax: \(error.description)")
        } catch {
            throw ConfigurationError(path: path, line: nil, key: nil, message: "TOML syntax: \(error)")
        }
        var reader = TableReader(path: path, locator: KeyLocator(source: source))
        return try reader.configuration(from: root)
    }
}

/// Parses TOML in a child process: this same program (`/proc/self/exe`) started with
/// `BACKSTOP_TOML_PROBE=<the parent's pid>`, reading the text on its stdin. TOMLKit 0.6.0's parser (toml++ 3,
/// built with its assertions on) aborts the process on some malformed TOML (found by
/// `make fuzz`), so a daemon or a `backstopctl` that read such a file would die instead
/// of naming it; the child dies in its place. Only a program whose `main` calls
/// ``answerIfAsked()`` uses the probe; elsewhere (the unit tests) TOML is parsed in-process.
public enum TOMLProbe {
    static let variable = "BACKSTOP_TOML_PROBE"
    /// Set by ``answerIfAsked()``: this program can be its own probe.
    nonisolated(unsafe) private static var programAnswers = false

    /// In the child (the variable names the parent, so that one left in an environment
    /// does nothing): parses stdin and exits 0 if the parser returns. Otherwise records
    /// that this program answers the probe. Each executable that loads a configuration
    /// calls this first in `main`, before any thread starts.
    public static func answerIfAsked() {
        guard ProcessInfo.processInfo.environment[variable] == String(getppid()) else {
            programAnswers = true
            return
        }
        let data = FileHandle.standardInput.readDataToEndOfFile()
        _ = try? TOMLTable(string: String(decoding: data, as: UTF8.self))
        exit(0)
    }

    /// Runs the child on `source` when this program answers the probe.
    /// - Returns: nil when the parser returned (or the program does not answer), else how
    ///   the child ended (e.g. `signal 6`), or why it could not run.
    static func failure(parsing source: String) -> String? {
        guard programAnswers else { return nil }
        var sockets: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sockets) == 0 else {
            return "socketpair: \(String(cString: strerror(errno)))"
        }
        defer { close(sockets[0]) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, sockets[1], 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let environment = ProcessInfo.processInfo.environment.merging([variable: String(getpid())]) { $1 }.map { "\($0)=\($1)" }
        var pid: pid_t = 0
        let program = "/proc/self/exe"
        let status = Spawner.withCStrings([program]) { argv in
            Spawner.withCStrings(environment) { envp in posix_spawn(&pid, program, &actions, nil, argv, envp) }
        }
        close(sockets[1])
        guard status == 0 else { return "cannot start the parser: \(String(cString: strerror(status)))" }
        var bytes = Array(source.utf8)[...]
        while !bytes.isEmpty {
            let sent = bytes.withUnsafeBytes { send(sockets[0], $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent <= 0 { break }  // the child ended early; its status says how
            bytes = bytes.dropFirst(sent)
        }
        shutdown(sockets[0], Int32(SHUT_WR))
        var wait: Int32 = 0
        while waitpid(pid, &wait, 0) < 0, errno == EINTR {}
        if wait & 0x7f != 0 { return "signal \(wait & 0x7f)" }
        let code = (wait >> 8) & 0xff
        return code == 0 ? nil : "exit code \(code)"
    }
}

/// Finds the malformed TOML that toml++ 3 (inside TOMLKit 0.6.0) does not reject but
/// aborts on, where it reports any other syntax error: an assertion in its parser fails
/// and takes the process down. Two such shapes are known (found by `make fuzz`):
/// a table header whose name starts with a character that can start no key (`[$x]`,
/// `[[[x]]]`, `[` alone; `parse_key`), and a `}` where an array expects a value
/// (`[1, }`; `parse_value`). The scan skips strings and comments and keeps a stack of
/// the arrays and inline tables of values, to tell a table header from an array.
enum TOMLAbortGuard {
    /// A syntax error toml++ would abort on.
    struct Finding: Equatable {
        /// 1-based.
        var line: Int
        var message: String
    }

    /// The first such error in `source`, nil when there is none.
    static func finding(in source: String) -> Finding? {
        let characters = Array(source.unicodeScalars)
        var index = 0
        var line = 1
        var open: [Unicode.Scalar] = []  // "[" and "{" of values
        var atLineStart = true
        var arrayExpectsValue = false  // just after an array's "[" or ","
        func starts(_ text: String, at position: Int) -> Bool {
            let scalars = Array(text.unicodeScalars)
            return position + scalars.count <= characters.count && Array(characters[position..<position + scalars.count]) == scalars
        }
        func startsKey(_ character: Unicode.Scalar) -> Bool {
            ("a"..."z").contains(character) || ("A"..."Z").contains(character) || ("0"..."9").contains(character)
                || ["_", "-", "\"", "'", "]"].contains(character)
        }
        while index < characters.count {
            let character = characters[index]
            switch character {
            case "\n":
                line += 1
                atLineStart = true
                index += 1
                continue
            case " ", "\t", "\r":
                index += 1
                continue
            case "#":
                while index < characters.count, characters[index] != "\n" { index += 1 }
                continue
            case "\"", "'":
                let quote = String(character)
                let triple = String(repeating: quote, count: 3)
                let multiline = starts(triple, at: index)
                let closing = multiline ? triple : quote
                index += multiline ? 3 : 1
                while index < characters.count, !starts(closing, at: index) {
                    if characters[index] == "\n" {
                        line += 1
                        if !multiline { break }
                    }
                    if quote == "\"", characters[index] == "\\" { index += 1 }
                    index += 1
                }
                index += closing.unicodeScalars.count
            case "[" where atLineStart && open.isEmpty:
                var next = index + 1
                if next < characters.count, characters[next] == "[" { next += 1 }
                while next < characters.count, characters[next] == " " || characters[next] == "\t" { next += 1 }
                if next < characters.count, !startsKey(characters[next]) {
                    return Finding(line: line, message: "a table header's name must start with a letter, a digit, '_', '-' or a quote")
                }
                // The rest of the header line is no value.
                while index < characters.count, characters[index] != "\n" { index += 1 }
                continue
            case "}" where arrayExpectsValue:
                return Finding(line: line, message: "'}' where the array expects a value or ']'")
            case "[", "{":
                open.append(character)
                index += 1
            case "]", "}":
                _ = open.popLast()
                index += 1
            default:
                index += 1
            }
            atLineStart = false
            arrayExpectsValue = open.last == "[" && (character == "[" || character == ",")
        }
        return nil
    }
}

/// Finds the line of a dotted key (`daemon.state_directory`, `agent[1].exec`) in the
/// source text. TOMLKit reports positions only for syntax errors, so semantic errors
/// get their line from this scan of table headers and `key =` lines.
struct KeyLocator {
    private var lines: [String: Int] = [:]

    init(source: String) {
        var prefix = ""
        var agentIndex = -1
        for (index, raw) in source.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            let number = index + 1
            if line.hasPrefix("[[") {
                let name = Self.headerName(line, open: "[[", close: "]]")
                if name == "agent" {
                    agentIndex += 1
                    prefix = "agent[\(agentIndex)]"
                } else {
                    prefix = name
                }
                lines[prefix] = lines[prefix] ?? number
            } else if line.hasPrefix("[") {
                let name = Self.headerName(line, open: "[", close: "]")
                prefix = name.hasPrefix("agent.") && agentIndex >= 0 ? "agent[\(agentIndex)]" + name.dropFirst(5) : name
                lines[prefix] = lines[prefix] ?? number
            } else if let equals = line.firstIndex(of: "=") {
                // A bare key or a quoted one ("key" = or 'key' =).
                let key = line[..<equals].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
                guard !key.isEmpty, key.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) || $0 == "_" || $0 == "-" })
                else { continue }
                let full = prefix.isEmpty ? key : prefix + "." + key
                lines[full] = lines[full] ?? number
            }
        }
    }

    /// The line of `key`, else of the nearest enclosing table header.
    func line(of key: String) -> Int? {
        var candidate = key
        while true {
            if let line = lines[candidate] { return line }
            guard let dot = candidate.lastIndex(of: ".") else { return nil }
            candidate = String(candidate[..<dot])
        }
    }

    private static func headerName(_ line: String, open: String, close: String) -> String {
        var name = line.dropFirst(open.count)
        if let end = name.range(of: close) { name = name[..<end.lowerBound] }
        return name.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: " ", with: "")
    }
}

/// Walks the parsed TOML tree, checking every key against the contract.
private struct TableReader {
    let path: String
    let locator: KeyLocator

    func fail(_ key: String?, _ message: String) -> ConfigurationError {
        ConfigurationError(path: path, line: key.flatMap { locator.line(of: $0) }, key: key, message: message)
    }

    /// The keys of `table` (at `prefix`) in the order the file has them, so that the first
    /// error reported is the first in the file.
    func keysInFileOrder(_ table: TOMLTable, prefix: String?) -> [String] {
        table.keys.sorted { first, second in
            let line = { (key: String) in self.locator.line(of: prefix.map { $0 + "." + key } ?? key) ?? .max }
            return (line(first), first) < (line(second), second)
        }
    }

    /// The keys an `[[agent]]` table takes (besides `sandbox`).
    static let agentKeys = [
        "name", "exec", "runner", "unit", "notify", "content_link", "failure_threshold", "failure_window_sec", "probation_sec",
        "restart_delay_ms", "restart_delay_max_sec", "start_timeout_sec", "watchdog_sec", "boot_good_after_sec",
        "boot_failure_threshold", "boot_loop_stops_agent", "safe_mode_exec", "preflight_sec", "preflight_exec", "ready_check_exec", "health_check_exec",
        "health_check_interval_sec", "health_check_timeout_sec", "health_check_failures", "clean_exit_is_failure",
        "max_bundle_bytes", "max_files", "require_signature", "trusted_keys", "keep_versions", "environment",
        "success_exit_status", "clean_exit",
    ]

    /// The keys an `[agent.sandbox]` table takes.
    static let sandboxKeys = [
        "engine", "user", "group", "capabilities", "no_new_privileges", "read_only_paths", "read_write_paths",
        "inaccessible_paths", "allow_service_manager", "private_tmp", "tmp_size", "private_network", "memory_max", "cpu_quota", "tasks_max",
        "system_call_filter",
    ]

    /// What to say about unknown `key` in a table that takes `known`: a likely misspelling
    /// (at most two letters off, Levenshtein), or nothing.
    static func suggestion(for key: String, among known: [String]) -> String {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var row = Array(0...b.count)
            for (i, x) in a.enumerated() {
                var previous = row[0]
                row[0] = i + 1
                for (j, y) in b.enumerated() {
                    let substitution = previous + (x == y ? 0 : 1)
                    previous = row[j + 1]
                    row[j + 1] = min(substitution, row[j] + 1, row[j + 1] + 1)
                }
            }
            return row[b.count]
        }
        let scored = known.map { ($0, distance(Array(key), Array($0))) }.filter { $0.1 <= 2 }.min { $0.1 < $1.1 }
        return scored.map { "; did you mean \"\($0.0)\"?" } ?? ""
    }

    mutating func configuration(from root: TOMLTable) throws(ConfigurationError) -> Configuration {
        var configuration = Configuration(path: path)
        for key in keysInFileOrder(root, prefix: nil) where key != "daemon" && key != "agent" {
            throw fail(key, "unknown key; the top level has [daemon] and [[agent]] tables")
        }
        if let value = root["daemon"] {
            guard let table = value.table else { throw fail("daemon", "must be a table ([daemon])") }
            configuration.daemon = try daemon(from: table)
        }
        if let value = root["agent"] {
            guard let array = value.array else { throw fail("agent", "must be an array of tables ([[agent]])") }
            for (index, element) in array.enumerated() {
                guard let table = element.table else { throw fail("agent[\(index)]", "must be a table ([[agent]])") }
                let agent = try self.agent(from: table, key: "agent[\(index)]")
                if configuration.agents.contains(where: { $0.name == agent.name }) {
                    throw fail("agent[\(index)].name", "duplicate agent name \"\(agent.name)\"; names must be unique")
                }
                configuration.agents.append(agent)
            }
        }
        try checkSocketPaths(configuration)
        let stateDirectory = Self.lexicalPath(configuration.daemon.stateDirectory)
        let runtimeDirectory = Self.lexicalPath(configuration.daemon.runtimeDirectory)
        for (key, directory) in [("daemon.state_directory", stateDirectory), ("daemon.runtime_directory", runtimeDirectory)] where directory == "/" {
            throw fail(key, "must not be /: it must be a directory of Backstop's own")
        }
        if stateDirectory == runtimeDirectory || stateDirectory.hasPrefix(runtimeDirectory + "/") || runtimeDirectory.hasPrefix(stateDirectory + "/") {
            throw fail("daemon.runtime_directory", "\(runtimeDirectory) and state_directory (\(stateDirectory)) must not be the same or one inside the other: state is kept across boots, the sockets and records of the runtime directory are not")
        }
        for (index, agent) in configuration.agents.enumerated() {
            let earlier = configuration.agents.prefix(index)
            if let unit = agent.unit, let other = earlier.first(where: { $0.unit == unit }) {
                throw fail("agent[\(index)].unit", "\(unit) is already agent \"\(other.name)\"'s unit; one agent per unit")
            }
            guard let link = agent.contentLink.map(Self.lexicalPath) else { continue }
            let key = "agent[\(index)].content_link"
            if link == stateDirectory || link.hasPrefix(stateDirectory + "/") {
                throw fail(key, "must not be inside state_directory (\(stateDirectory))")
            }
            if stateDirectory.hasPrefix(link + "/") || link == "/" {
                throw fail(key, "\(link) holds state_directory (\(stateDirectory)); the link would replace it")
            }
            if Self.systemDirectories.contains(link) {
                throw fail(key, "\(link) is a system directory; Backstop would move it aside and put a symlink in its place")
            }
            for other in earlier {
                guard let otherLink = other.contentLink.map(Self.lexicalPath) else { continue }
                if otherLink == link {
                    throw fail(key, "\(link) is already agent \"\(other.name)\"'s content_link; one agent per link")
                }
                if otherLink.hasPrefix(link + "/") || link.hasPrefix(otherLink + "/") {
                    throw fail(key, "\(link) and agent \"\(other.name)\"'s content_link \(otherLink) are nested; one would land in the other's content")
                }
            }
        }
        return configuration
    }

    /// `path` without empty, `.` and `..` components, worked out on the text alone: the link
    /// itself is what matters, not where it points now.
    static func lexicalPath(_ path: String) -> String {
        var components: [Substring] = []
        for component in path.split(separator: "/") where component != "." {
            if component == ".." { _ = components.popLast() } else { components.append(component) }
        }
        return "/" + components.joined(separator: "/")
    }

    /// Directories of the file system hierarchy (hier(7)) that a `content_link` must never be:
    /// Backstop sets aside whatever is at the link and replaces it with a symlink.
    static let systemDirectories: Set<String> = {
        let top = ["bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt", "opt", "proc",
                   "root", "run", "sbin", "srv", "sys", "tmp", "usr", "var"]
        let usr = ["bin", "include", "lib", "lib32", "lib64", "libexec", "local", "sbin", "share", "src"]
        let var_ = ["backups", "cache", "lib", "local", "lock", "log", "mail", "opt", "run", "spool", "tmp"]
        return Set(top.map { "/" + $0 } + usr.map { "/usr/" + $0 } + var_.map { "/var/" + $0 } + ["/etc/systemd", "/run/systemd"])
    }()

    /// Unix socket paths must fit `sun_path` (108 bytes with its NUL, unix(7)).
    func checkSocketPaths(_ configuration: Configuration) throws(ConfigurationError) {
        let limit = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1
        let longest = configuration.agents.map { configuration.daemon.notifySocketPath(agent: $0.name) }
            + [configuration.daemon.controlSocketPath]
        if let tooLong = longest.first(where: { $0.utf8.count > limit }) {
            throw fail("daemon.runtime_directory", "too long: the socket \(tooLong) exceeds the \(limit) bytes a Unix socket path may have")
        }
    }

    func daemon(from table: TOMLTable) throws(ConfigurationError) -> DaemonConfiguration {
        var daemon = DaemonConfiguration()
        for key in keysInFileOrder(table, prefix: "daemon") {
            let full = "daemon." + key
            switch key {
            case "state_directory": daemon.stateDirectory = try absolutePath(table, key, full)
            case "runtime_directory": daemon.runtimeDirectory = try absolutePath(table, key, full)
            default: throw fail(full, "unknown key in [daemon] (known: state_directory, runtime_directory)")
            }
        }
        return daemon
    }

    func agent(from table: TOMLTable, key prefix: String) throws(ConfigurationError) -> AgentConfiguration {
        guard let nameValue = table["name"] else { throw fail(prefix, "missing key \"name\"") }
        guard let name = nameValue.string else { throw fail(prefix + ".name", "must be a string") }
        guard AgentConfiguration.isValidName(name) else {
            throw fail(prefix + ".name", "\"\(name)\" is not a valid agent name; use 1 to 64 of a-z, 0-9, _ and -")
        }
        var agent = AgentConfiguration(name: name, exec: [])
        for key in keysInFileOrder(table, prefix: prefix) {
            let full = prefix + "." + key
            switch key {
            case "name": break
            case "exec":
                agent.exec = try stringArray(table, key, full)
                guard let program = agent.exec.first, !program.isEmpty else {
                    throw fail(full, "must name a program: a non-empty array of strings")
                }
            case "runner":
                let raw = try string(table, key, full)
                guard let runner = RunnerKind(rawValue: raw) else {
                    throw fail(full, "must be \"direct\" or \"systemd\", not \"\(raw)\"")
                }
                agent.runner = runner
            case "unit": agent.unit = try string(table, key, full)
            case "notify": agent.notify = try bool(table, key, full)
            case "content_link":
                let link = try string(table, key, full)
                if !link.isEmpty {
                    guard link.hasPrefix("/") else { throw fail(full, "must be an absolute path") }
                    agent.contentLink = link
                }
            case "failure_threshold": agent.failureThreshold = try integer(table, key, full, minimum: 1)
            case "failure_window_sec": agent.failureWindowSeconds = try integer(table, key, full, minimum: 1)
            case "probation_sec": agent.probationSeconds = try integer(table, key, full, minimum: 1)
            case "restart_delay_ms": agent.restartDelayMilliseconds = try integer(table, key, full, minimum: 0)
            case "restart_delay_max_sec": agent.restartDelayMaxSeconds = try integer(table, key, full, minimum: 0)
            case "start_timeout_sec": agent.startTimeoutSeconds = try integer(table, key, full, minimum: 1)
            case "watchdog_sec": agent.watchdogSeconds = try integer(table, key, full, minimum: 0)
            case "boot_good_after_sec": agent.bootGoodAfterSeconds = try integer(table, key, full, minimum: 1)
            case "boot_failure_threshold": agent.bootFailureThreshold = try integer(table, key, full, minimum: 1)
            case "boot_loop_stops_agent": agent.bootLoopStopsAgent = try bool(table, key, full)
            case "safe_mode_exec": agent.safeModeExec = try command(table, key, full)
            case "preflight_sec": agent.preflightSeconds = try integer(table, key, full, minimum: 0)
            case "ready_check_exec": agent.readyCheckExec = try command(table, key, full)
            case "health_check_exec": agent.healthCheckExec = try command(table, key, full)
            case "health_check_interval_sec": agent.healthCheckIntervalSeconds = try integer(table, key, full, minimum: 1)
            case "health_check_timeout_sec": agent.healthCheckTimeoutSeconds = try integer(table, key, full, minimum: 1)
            case "health_check_failures": agent.healthCheckFailures = try integer(table, key, full, minimum: 1)
            case "clean_exit_is_failure": agent.cleanExitIsFailure = try bool(table, key, full)
            case "max_bundle_bytes": agent.stagingRules.maxBundleBytes = Int64(try integer(table, key, full, minimum: 1))
            case "max_files": agent.stagingRules.maxFiles = try integer(table, key, full, minimum: 1)
            case "require_signature": agent.stagingRules.requireSignature = try bool(table, key, full)
            case "trusted_keys": agent.stagingRules.trustedKeysDirectory = Self.lexicalPath(try absolutePath(table, key, full))
            case "keep_versions": agent.keepVersions = try integer(table, key, full, minimum: 1)
            case "preflight_exec": agent.preflightExec = try command(table, key, full)
            case "environment": agent.environment = try environment(table, key, full)
            case "success_exit_status": agent.successExitStatus = try successExitStatus(table, key, full)
            case "clean_exit":
                let raw = try string(table, key, full)
                guard let cleanExit = CleanExit(rawValue: raw) else {
                    throw fail(full, "must be \"backoff\" or \"normal\", not \"\(raw)\"")
                }
                agent.cleanExit = cleanExit
            case "sandbox":
                guard let sandbox = table[key]?.table else { throw fail(full, "must be a table ([agent.sandbox])") }
                agent.sandbox = try self.sandbox(from: sandbox, key: full)
            default:
                if Self.sandboxKeys.contains(key) { throw fail(full, "belongs in the agent's [agent.sandbox] table") }
                throw fail(full, "unknown key in [[agent]]" + Self.suggestion(for: key, among: Self.agentKeys + ["sandbox"]))
            }
        }
        switch agent.runner {
        case .direct:
            guard table["exec"] != nil else { throw fail(prefix, "missing key \"exec\" (the agent's command line)") }
            for (key, words) in [("exec", agent.exec), ("safe_mode_exec", agent.safeModeExec)] {
                guard let program = words.first, !program.hasPrefix("/") else { continue }
                if agent.sandbox.engine == .systemd {
                    throw fail(prefix + "." + key, "must name its program by an absolute path with engine = \"systemd\" (a transient unit's ExecStart=)")
                }
                guard !program.hasPrefix("{content}/") else { continue }
                let found = DirectRunner.lookUp(program, in: nil).map { " (here: \($0))" } ?? ""
                throw fail(prefix + "." + key, "must name its program by an absolute path, or one in the content ({content}/...), not \"\(program)\"\(found): a search of PATH at run time would start whatever comes first there")
            }
            if agent.unit != nil { throw fail(prefix + ".unit", "only meaningful with runner = \"systemd\"") }
        case .systemd:
            guard let unit = agent.unit else { throw fail(prefix, "missing key \"unit\": runner = \"systemd\" supervises an existing unit") }
            guard unit.hasSuffix(".service"), unit.count > ".service".count, !unit.contains("/") else {
                throw fail(prefix + ".unit", "must name a service unit, such as \"clamav-daemon.service\", not \"\(unit)\"")
            }
            if unit.hasSuffix("@.service") {
                throw fail(prefix + ".unit", "\(unit) is a template; name one instance, such as \"\(unit.dropLast(".service".count))main.service\"")
            }
            if unit == "backstopd.service" {
                throw fail(prefix + ".unit", "backstopd.service is Backstop itself, not an agent")
            }
            guard agent.contentLink != nil else {
                throw fail(prefix, "missing key \"content_link\": with runner = \"systemd\" the unit finds its content there")
            }
            if agent.preflightSeconds > 0, agent.preflightExec.isEmpty {
                throw fail(prefix + ".preflight_exec", "missing: with runner = \"systemd\" a preflight runs this command line (the unit's ExecStart= is systemd's)")
            }
            if agent.sandbox.engine == .systemd {
                throw fail(prefix + ".sandbox.engine", "only for runner = \"direct\": a unit's sandbox is its drop-in (backstopctl sandbox --drop-in)")
            }
            for key in ["exec", "safe_mode_exec", "watchdog_sec", "notify"] where table[key] != nil {
                throw fail(prefix + "." + key, "not used with runner = \"systemd\": the unit's own settings (ExecStart=, WatchdogSec=, Type=) apply")
            }
        }
        if agent.cleanExit == .normal, agent.cleanExitIsFailure {
            throw fail(prefix + ".clean_exit", "\"normal\" contradicts clean_exit_is_failure = true: a clean exit cannot be both the agent's normal life and a failure")
        }
        if agent.watchdogSeconds > 0 && !agent.notify {
            throw fail(prefix + ".watchdog_sec", "needs notify = true: heartbeats arrive as WATCHDOG=1 on the notify socket")
        }
        return agent
    }

    /// The `[agent.sandbox]` table at `prefix`; see ``SandboxSpec`` for each key.
    func sandbox(from table: TOMLTable, key prefix: String) throws(ConfigurationError) -> SandboxSpec {
        var spec = SandboxSpec()
        for key in keysInFileOrder(table, prefix: prefix) {
            let full = prefix + "." + key
            switch key {
            case "engine":
                let raw = try string(table, key, full)
                guard let engine = SandboxSpec.SandboxEngine(rawValue: raw) else {
                    throw fail(full, "must be \"bubblewrap\" or \"systemd\", not \"\(raw)\"")
                }
                spec.engine = engine
            case "user", "group":
                var name = table[key]?.int.map { String($0) } ?? ""
                if name.isEmpty { name = try string(table, key, full) }
                guard SandboxSpec.isValidAccountName(name) else {
                    throw fail(full, "\"\(name)\" is not a \(key) name or number")
                }
                // setresuid(2) takes -1 as "leave unchanged": the agent would stay root.
                if let number = UInt32(name), !SandboxAccount.isValidID(number) {
                    throw fail(full, "\(number) is not a valid \(key) id: it is (uid_t) -1 or its 16-bit form, which the kernel and systemd take for \"unchanged\"")
                }
                if key == "user" { spec.user = name } else { spec.group = name }
            case "capabilities":
                spec.capabilities = []
                for raw in try stringArray(table, key, full) {
                    let name = raw.uppercased().hasPrefix("CAP_") ? raw.uppercased() : "CAP_" + raw.uppercased()
                    guard SandboxSpec.knownCapabilities.contains(name) else {
                        throw fail(full, "\"\(raw)\" is not a capability; capabilities(7) names them, such as CAP_NET_ADMIN")
                    }
                    if !spec.capabilities.contains(name) { spec.capabilities.append(name) }
                }
            case "no_new_privileges": spec.noNewPrivileges = try bool(table, key, full)
            case "read_only_paths": spec.readOnlyPaths = try paths(table, key, full)
            case "read_write_paths": spec.readWritePaths = try paths(table, key, full)
            case "inaccessible_paths": spec.inaccessiblePaths = try paths(table, key, full)
            case "allow_service_manager": spec.allowServiceManager = try bool(table, key, full)
            case "private_tmp": spec.privateTmp = try bool(table, key, full)
            case "private_network": spec.privateNetwork = try bool(table, key, full)
            case "tmp_size":
                if table[key]?.int != nil {
                    spec.tmpSizeBytes = UInt64(try integer(table, key, full, minimum: 1))
                } else {
                    let text = try string(table, key, full)
                    guard let bytes = SandboxSpec.bytes(of: text) else {
                        throw fail(full, "\"\(text)\" is not a size: bytes, or a number with K, M, G or T (such as \"64M\")")
                    }
                    spec.tmpSizeBytes = bytes
                }
            case "memory_max":
                if table[key]?.int != nil {
                    spec.memoryMaxBytes = UInt64(try integer(table, key, full, minimum: 1))
                } else {
                    let text = try string(table, key, full)
                    if text == "infinity" {
                        spec.memoryMaxBytes = nil
                    } else {
                        guard let bytes = SandboxSpec.bytes(of: text) else {
                            throw fail(full, "\"\(text)\" is not a memory size: bytes, or a number with K, M, G or T (such as \"512M\"), or \"infinity\"")
                        }
                        spec.memoryMaxBytes = bytes
                    }
                }
                if let bytes = spec.memoryMaxBytes, bytes < 1 << 20 {
                    throw fail(full, "\(bytes) bytes is too little for any agent to start; at least 1M")
                }
            case "cpu_quota":
                let text = try string(table, key, full)
                guard text.hasSuffix("%"), let percent = Int(text.dropLast()), percent > 0, percent <= 100_000 else {
                    throw fail(full, "\"\(text)\" is not a CPU quota: a percentage of one CPU, such as \"50%\" or \"200%\"")
                }
                spec.cpuQuotaPercent = percent
            case "tasks_max":
                if table[key]?.string == "infinity" {
                    spec.tasksMax = nil
                } else {
                    guard table[key]?.int != nil else { throw fail(full, "must be an integer or \"infinity\", not \(typeName(table[key]))") }
                    spec.tasksMax = try integer(table, key, full, minimum: 1)
                }
            case "system_call_filter":
                spec.systemCallFilter = try stringArray(table, key, full)
                if let problem = spec.systemCallFilter.lazy.compactMap(SandboxSpec.filterEntryProblem).first {
                    throw fail(full, problem)
                }
            default:
                if Self.agentKeys.contains(key) { throw fail(full, "belongs in [[agent]], above its [agent.sandbox] table") }
                throw fail(full, "unknown key in [agent.sandbox]" + Self.suggestion(for: key, among: Self.sandboxKeys)
                    + " (known: \(Self.sandboxKeys.joined(separator: ", ")))")
            }
        }
        // An inaccessible path hides everything below it, in bubblewrap and systemd alike
        // (systemd drops the mounts an inaccessible one obstructs): a path named below it would
        // be listed as applied and yet not be there.
        for (key, paths) in [("read_write_paths", spec.readWritePaths), ("read_only_paths", spec.readOnlyPaths)] {
            for path in paths {
                guard let hiding = spec.inaccessiblePaths.first(where: { BubblewrapSandbox.isInside(path, $0) }) else { continue }
                let defaults = table["inaccessible_paths"] == nil ? " (one of the default inaccessible_paths; set inaccessible_paths to leave it out)" : ""
                throw fail(prefix + "." + key, "\"\(path)\" lies in inaccessible path \"\(hiding)\"\(defaults), which hides it from the agent")
            }
        }
        return spec
    }

    /// An array of absolute paths, each without `.` and `..` components.
    func paths(_ table: TOMLTable, _ key: String, _ full: String) throws(ConfigurationError) -> [String] {
        var result: [String] = []
        for path in try stringArray(table, key, full) {
            guard path.hasPrefix("/") else { throw fail(full, "\"\(path)\" is not an absolute path") }
            guard !path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
                throw fail(full, "\(String(reflecting: path)) has a control character in it")
            }
            guard !path.split(separator: "/").contains(where: { $0 == "." || $0 == ".." }) else {
                throw fail(full, "\"\(path)\" has . or .. in it; name the directory itself")
            }
            result.append(Self.lexicalPath(path))
        }
        return result
    }

    /// Exit codes (0 to 255) and signal names (`"SIGTERM"`), as systemd's `SuccessExitStatus=`.
    func successExitStatus(_ table: TOMLTable, _ key: String, _ full: String) throws(ConfigurationError) -> SuccessExitStatus {
        guard let array = table[key]?.array else { throw fail(full, "must be an array of exit codes and signal names, not \(typeName(table[key]))") }
        var status = SuccessExitStatus()
        for element in array {
            if let code = element.int {
                guard (0...255).contains(code) else { throw fail(full, "exit code \(code) is not between 0 and 255") }
                status.codes.insert(Int32(code))
            } else if let name = element.string {
                guard let signal = SignalName.number(of: name) else {
                    throw fail(full, "\(String(reflecting: name)) is not a signal name (such as \"SIGTERM\")")
                }
                status.signals.insert(signal)
            } else {
                throw fail(full, "must be an array of exit codes and signal names; found \(typeName(element))")
            }
        }
        return status
    }

    /// `"KEY=value"` strings as systemd's `Environment=` takes them, by name (a later one wins).
    /// Backstop's own variables (``AgentEnvironment/isReserved(_:)``) are refused: they are set for each run.
    func environment(_ table: TOMLTable, _ key: String, _ full: String) throws(ConfigurationError) -> [String: String] {
        var variables: [String: String] = [:]
        for assignment in try stringArray(table, key, full) {
            guard let equals = assignment.firstIndex(of: "=") else {
                throw fail(full, "\(String(reflecting: assignment)) is not of the form \"KEY=value\"")
            }
            let name = String(assignment[..<equals])
            guard AgentEnvironment.isValidName(name) else {
                throw fail(full, "\(String(reflecting: name)) is not a variable name (letters, digits and _, not starting with a digit)")
            }
            if let reason = AgentEnvironment.reservation(of: name) { throw fail(full, "\(name) \(reason)") }
            let value = String(assignment[assignment.index(after: equals)...])
            guard !value.unicodeScalars.contains("\u{0}") else { throw fail(full, "the value of \(name) has a NUL byte in it") }
            guard assignment.utf8.count <= AgentEnvironment.maximumAssignmentBytes else {
                throw fail(full, "\(name)=... is \(assignment.utf8.count) bytes; the kernel passes at most \(AgentEnvironment.maximumAssignmentBytes) to a program")
            }
            variables[name] = value
        }
        return variables
    }

    /// An optional command line: `[]` (unset) or an array whose first string names the program.
    func command(_ table: TOMLTable, _ key: String, _ full: String) throws(ConfigurationError) -> [String] {
        let words = try stringArray(table, key, full)
        if let program = words.first, program.isEmpty { throw fail(full, "the program must not be empty") }
        return words
    }

    func string(_ table: TOMLTable, _ key: String, _ full: String) throws(ConfigurationError) -> String {
        guard let value = table[key]?.string else { throw fail(full, "must be a string, not \(typeName(table[key]))") }
        return value
    }

    func absolutePath(_ table: TOMLTable, _ key: String, _ full: String) throws(ConfigurationError) -> String {
        let value = try string(table, key, full)
        guard value.hasPrefix("/") else { throw fail(full, "must be an absolute path, not \"\(value)\"") }
        return value
    }

    func bool(_ table: TOMLTable, _ key: String, _ full: String) throws(ConfigurationError) -> Bool {
        guard let value = table[key]?.bool else { throw fail(full, "must be true or false, not \(typeName(table[key]))") }
        return value
    }

    func integer(_ table: TOMLTable, _ key: String, _ full: String, minimum: Int) throws(ConfigurationError) -> Int {
        guard let value = table[key]?.int else { throw fail(full, "must be an integer, not \(typeName(table[key]))") }
        guard value >= minimum else {
            throw fail(full, minimum == 1 ? "must be greater than zero, not \(value)" : "must not be negative, not \(value)")
        }
        guard value <= 1 << 40 else { throw fail(full, "\(value) is too large") }
        return value
    }

    func stringArray(_ table: TOMLTable, _ key: String, _ full: String) throws(ConfigurationError) -> [String] {
        guard let array = table[key]?.array else { throw fail(full, "must be an array of strings, not \(typeName(table[key]))") }
        var strings: [String] = []
        for element in array {
            guard let string = element.string else {
                throw fail(full, "must be an array of strings; found \(typeName(element))")
            }
            strings.append(string)
        }
        return strings
    }

    func typeName(_ value: (any TOMLValueConvertible)?) -> String {
        guard let value else { return "nothing" }
        switch value.type {
        case .table: return "a table"
        case .array: return "an array"
        case .string: return "a string"
        case .int: return "an integer"
        case .double: return "a floating-point number"
        case .bool: return "a boolean"
        case .date, .time, .dateTime: return "a date or time"
        }
    }
}
