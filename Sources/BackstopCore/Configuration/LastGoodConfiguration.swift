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
        self.path = path
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

    /// The copy kept for the configuration file at `path`, nil when there is none (or it is
    /// another file's, or unreadable: it is then as good as none).
    public static func read(for path: String, from file: String = file()) -> LastGoodConfiguration? {
        guard let data = FileManager.default.contents(atPath: file),
              let copy = try? JSONDecoder.backstop.decode(LastGoodConfiguration.self, from: data),
              copy.path == path else { return nil }
        return copy
    }

    /// Writes the copy crash-safely (``DurableFile/write(_:to:mode:)``), readable by all as the
    /// configuration file is, so that `backstopctl` finds the runtime directory through it.
    /// - Throws: the error of creating the directory or writing the file.
    public func save(to file: String = file()) throws {
        try DurableFile.makeDirectories((file as NSString).deletingLastPathComponent, mode: 0o755)
        try DurableFile.write(try JSONEncoder.backstop.encode(self), to: file, mode: [.ownerReadWrite, .groupRead, .otherRead])
    }
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
        guard let copy = LastGoodConfiguration.read(for: path, from: lastGoodFile),
              let configuration = try? Configuration.parse(copy.text, path: path) else { throw fileError }
        return EffectiveConfiguration(configuration: configuration, fileError: fileError, lastGoodLoadedAt: copy.loadedAt)
    }

    /// One sentence for the journal and `status`: the file's error and what runs instead.
    public var problem: String? {
        guard let fileError, let lastGoodLoadedAt else { return nil }
        return "the configuration file does not load (\(fileError)); running on the last configuration that loaded, from \(StatusText.rfc3339(lastGoodLoadedAt))"
    }
}
