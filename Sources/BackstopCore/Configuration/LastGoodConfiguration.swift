import Foundation

/// The last configuration file that loaded and validated, kept by backstopd so that a file
/// that no longer does (a typo, a bad push from configuration management) never stops the
/// agents: backstopd then runs on this copy and says so (Backstop's own rollback, applied
/// to its own configuration).
///
/// It is kept as JSON, `{"path": ..., "loaded_at": RFC 3339, "text": ...}`, in
/// ``file(environment:)``: backstopd's own state directory, which it must find before it
/// has a configuration, so it is not `state_directory` but systemd's `$STATE_DIRECTORY`
/// (systemd.exec(5); `StateDirectory=backstop` gives /var/lib/backstop), else /var/lib/backstop.
public struct LastGoodConfiguration: Codable, Sendable, Equatable {
    /// The configuration file the text was read from.
    public var path: String
    /// When it loaded.
    public var loadedAt: Date
    /// The file's text, byte for byte.
    public var text: String

    enum CodingKeys: String, CodingKey {
        case path, text
        case loadedAt = "loaded_at"
    }

    /// A copy of `text`, read from `path` at `loadedAt`.
    public init(path: String, loadedAt: Date, text: String) {
        self.path = Self.canonical(path)
        self.loadedAt = loadedAt
        self.text = text
    }

    /// `<$STATE_DIRECTORY or /var/lib/backstop>/configuration.last-good.json` (the first
    /// directory when `STATE_DIRECTORY` lists several, colon-separated).
    public static func file(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let directory = environment["STATE_DIRECTORY"].flatMap { $0.split(separator: ":").first.map(String.init) }
            ?? DaemonConfiguration().stateDirectory
        return directory + "/configuration.last-good.json"
    }

    /// The copy kept for the configuration file at `path` (however it is spelt: relative, or
    /// through a symlink), nil when there is none or it is another file's.
    /// - Throws: ``LastGoodConfigurationError`` when the copy is there but unreadable.
    public static func read(for path: String, from file: String = file()) throws(LastGoodConfigurationError) -> LastGoodConfiguration? {
        guard let data = FileManager.default.contents(atPath: file) else { return nil }
        let copy: LastGoodConfiguration
        do { copy = try JSONDecoder.backstop.decode(LastGoodConfiguration.self, from: data) } catch {
            throw LastGoodConfigurationError(file: file, reason: "\(error)")
        }
        return copy.path == canonical(path) ? copy : nil
    }

    /// The name a configuration file's copy is kept under: its real path (realpath(3)) when
    /// it exists, else the absolute path with `.` and `..` resolved lexically.
    public static func canonical(_ path: String) -> String {
        if let resolved = realpath(path, nil) {
            defer { free(resolved) }
            return String(cString: resolved)
        }
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        return URL(fileURLWithPath: absolute).standardizedFileURL.path
    }

    /// Writes the copy crash-safely (``DurableFile/write(_:to:mode:)``), readable by all as the
    /// configuration file is, so that `backstopctl` finds the runtime directory through it.
    /// - Throws: the error of creating the directory or writing the file.
    public func save(to file: String = file()) throws {
        try DurableFile.makeDirectories((file as NSString).deletingLastPathComponent, mode: 0o755)
        try DurableFile.write(try JSONEncoder.backstop.encode(self), to: file, mode: [.ownerReadWrite, .groupRead, .otherRead])
    }
}

/// A last good copy that is there but cannot be read (truncated, edited by hand).
public struct LastGoodConfigurationError: Error, CustomStringConvertible {
    /// The copy's file.
    public var file: String
    /// What is wrong with it.
    public var reason: String

    public var description: String { "\(file) is unreadable (\(reason))" }
}

/// A configuration as backstopd and backstopctl take it: the file when it loads, else the
/// last copy of it that did (``LastGoodConfiguration``).
public struct EffectiveConfiguration: Sendable {
    /// What to run with.
    public var configuration: Configuration
    /// Why the file itself does not load; nil when it does (and `configuration` is the file's).
    public var fileError: ConfigurationError?
    /// When the last good copy in use was loaded; nil when the file itself is in use.
    public var lastGoodLoadedAt: Date?
    /// The file's text when the file itself loaded, to be kept as the last good copy.
    public var loadedText: String?

    /// The file at `path`; when it does not load, its last good copy (from `lastGoodFile`).
    /// - Throws: the file's ``ConfigurationError`` when there is no last good copy, or the copy
    ///   does not load either (say, after an upgrade that made a value invalid).
    public static func load(path: String, lastGoodFile: String = LastGoodConfiguration.file()) throws(ConfigurationError) -> EffectiveConfiguration {
        let fileError: ConfigurationError
        do {
            let text = try Configuration.source(path: path)
            return EffectiveConfiguration(configuration: try Configuration.parse(text, path: path), loadedText: text)
        } catch {
            fileError = error
        }
        let copy: LastGoodConfiguration?
        do { copy = try LastGoodConfiguration.read(for: path, from: lastGoodFile) } catch {
            throw ConfigurationError(path: fileError.path, line: fileError.line, key: fileError.key,
                                     message: fileError.message + "; and the last good copy cannot be used: \(error)")
        }
        guard let copy else { throw fileError }
        let configuration: Configuration
        do { configuration = try Configuration.parse(copy.text, path: path) } catch {
            throw ConfigurationError(path: fileError.path, line: fileError.line, key: fileError.key,
                                     message: fileError.message + "; and the last good copy in \(lastGoodFile) does not load either: \(error)")
        }
        return EffectiveConfiguration(configuration: configuration, fileError: fileError, lastGoodLoadedAt: copy.loadedAt)
    }

    /// One sentence for the journal and `status`: the file's error and what runs instead.
    public var problem: String? {
        guard let fileError, let lastGoodLoadedAt else { return nil }
        return "the configuration file does not load (\(fileError)); running on the last configuration that loaded, from \(StatusText.rfc3339(lastGoodLoadedAt))"
    }
}
