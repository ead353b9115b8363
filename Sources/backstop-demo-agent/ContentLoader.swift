/// Reads a content directory into a ``ContentSet``, rejecting anything the
/// interpreter could not make sense of. It deliberately does NOT check an
/// instance's value count against its template: that missing check is the
/// Channel File 291 bug this agent re-enacts.
enum ContentLoader {
    /// Largest accepted `fields=` value; keeps a typo from mapping gigabytes.
    static let maximumFieldCount = 65_536

    /// Loads and cross-checks every content file in `directory`.
    static func load(from directory: String) throws(ContentError) -> ContentSet {
        let entries = try listDirectory(directory)
        guard entries.contains("templates.conf") else {
            throw .missingTemplates(path: join(directory, "templates.conf"))
        }
        let templates = try parseTemplates(in: directory)
        var instances: [Instance] = []
        var behavior: (value: Behavior, origin: String)?
        for name in entries.filter(isChannelFile).sorted() {
            for line in try lines(of: join(directory, name), named: name) {
                switch line.tokens.first {
                case "instance":
                    instances.append(try parseInstance(line, templates: templates))
                case "behavior":
                    if let earlier = behavior {
                        throw line.error("second behavior line (first at \(earlier.origin))")
                    }
                    behavior = (try parseBehavior(line), line.origin)
                default:
                    throw line.error("expected 'instance' or 'behavior'")
                }
            }
        }
        if let behavior, case .crashAfter = behavior.value, templates.isEmpty {
            throw .invalidLine(origin: behavior.origin, reason: "crash-after needs at least one template")
        }
        return ContentSet(templates: templates, instances: instances, behavior: behavior?.value)
    }

    /// Channel files are `channel-*.conf`, like the sensor's `C-*.sys` files.
    private static func isChannelFile(_ name: String) -> Bool {
        name.hasPrefix("channel-") && name.hasSuffix(".conf")
    }

    /// Entry names of the content directory.
    private static func listDirectory(_ directory: String) throws(ContentError) -> [String] {
        do {
            return try Files.list(directory)
        } catch {
            throw .unreadableDirectory(path: directory, reason: error.reason)
        }
    }

    /// `directory/name`, without doubling a trailing slash.
    private static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// Parses templates.conf: one unique `template <name> fields=<N>` per line.
    private static func parseTemplates(in directory: String) throws(ContentError) -> [Template] {
        var templates: [Template] = []
        for line in try lines(of: join(directory, "templates.conf"), named: "templates.conf") {
            guard line.tokens.count == 3, line.tokens[0] == "template" else {
                throw line.error("expected 'template <name> fields=<N>'")
            }
            let name = String(line.tokens[1])
            guard !templates.contains(where: { $0.name == name }) else {
                throw line.error("duplicate template '\(name)'")
            }
            templates.append(Template(name: name, fieldCount: try parseFieldCount(line)))
        }
        return templates
    }

    /// The `<N>` of a `fields=<N>` token.
    private static func parseFieldCount(_ line: ContentLine) throws(ContentError) -> Int {
        let token = line.tokens[2]
        guard token.hasPrefix("fields="),
              let count = Int(token.dropFirst("fields=".count)),
              (1...maximumFieldCount).contains(count)
        else {
            throw line.error("expected fields=<1...\(maximumFieldCount)>, got '\(token)'")
        }
        return count
    }

    /// Parses `instance <template> <v1>,<v2>,...`, checking only that the
    /// template exists, never how many fields it has.
    private static func parseInstance(
        _ line: ContentLine, templates: [Template]
    ) throws(ContentError) -> Instance {
        guard line.tokens.count == 3 else {
            throw line.error("expected 'instance <template> <value>,<value>,...' (no spaces in the value list)")
        }
        let templateName = String(line.tokens[1])
        guard templates.contains(where: { $0.name == templateName }) else {
            throw line.error("unknown template '\(templateName)'")
        }
        let values = line.tokens[2].split(separator: ",", omittingEmptySubsequences: false)
        guard !values.contains(where: \.isEmpty) else {
            throw line.error("empty value in '\(line.tokens[2])'")
        }
        return Instance(templateName: templateName, values: values.map(String.init), origin: line.origin)
    }

    /// Parses `behavior <kind> [argument]`.
    private static func parseBehavior(_ line: ContentLine) throws(ContentError) -> Behavior {
        let arguments = line.tokens.dropFirst(2)
        switch (line.tokens.dropFirst().first, arguments.count) {
        case ("hang-after-start", 0):
            return .hangAfterStart
        case ("exit", 1):
            guard let code = Int32(arguments.first!), (1...255).contains(code) else {
                throw line.error("exit code must be 1...255")
            }
            return .exit(code: code)
        case ("slow-start", 1):
            return .slowStart(seconds: try parseSeconds(arguments.first!, line))
        case ("crash-after", 1):
            return .crashAfter(seconds: try parseSeconds(arguments.first!, line))
        default:
            throw line.error(
                "expected 'behavior hang-after-start', 'behavior exit <code>', "
                    + "'behavior slow-start <seconds>' or 'behavior crash-after <seconds>'")
        }
    }

    /// A finite, non-negative, possibly fractional number of seconds.
    private static func parseSeconds(_ token: Substring, _ line: ContentLine) throws(ContentError) -> Double {
        guard let seconds = Double(token), seconds.isFinite, seconds >= 0 else {
            throw line.error("'\(token)' is not a non-negative number of seconds")
        }
        return seconds
    }

    /// The meaningful lines of the content file at `path`, labelled with `name`.
    private static func lines(of path: String, named name: String) throws(ContentError) -> [ContentLine] {
        let text: String
        do {
            text = try Files.readText(path)
        } catch {
            throw .unreadableFile(path: path, reason: error.reason)
        }
        return ContentLine.parse(text, fileName: name)
    }
}

/// A non-blank, comment-stripped line of a content file.
struct ContentLine {
    /// `file:line`, 1-based, for error messages.
    let origin: String
    /// Whitespace-separated tokens; never empty.
    let tokens: [Substring]

    /// Splits `text` into meaningful lines, dropping comments and blank lines.
    static func parse(_ text: String, fileName: String) -> [ContentLine] {
        text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated().compactMap { index, raw in
            let code = raw.prefix { $0 != "#" }
            let tokens = code.split(whereSeparator: \.isWhitespace)
            return tokens.isEmpty ? nil : ContentLine(origin: "\(fileName):\(index + 1)", tokens: tokens)
        }
    }

    /// A content error located at this line.
    func error(_ reason: String) -> ContentError {
        .invalidLine(origin: origin, reason: reason)
    }
}
