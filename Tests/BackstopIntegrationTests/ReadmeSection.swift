import Foundation

/// A section of README.md, from its heading line to the next `## ` heading, so that tests
/// follow what the README tells an operator to do, to the letter.
struct ReadmeSection {
    /// The section's text after its heading line.
    let text: String

    /// - Parameter heading: the heading line as README.md spells it (`## fail2ban as the agent`).
    /// - Throws: when README.md cannot be read or has no such heading.
    init(_ heading: String) throws {
        let readme = try String(contentsOfFile: Paths.repository + "/README.md", encoding: .utf8)
        guard let start = readme.range(of: "\n" + heading + "\n") else {
            throw HarnessError.failed("README.md has no section \"\(heading)\"")
        }
        let end = readme.range(of: "\n## ", range: start.upperBound..<readme.endIndex)?.lowerBound ?? readme.endIndex
        text = String(readme[start.upperBound..<end])
    }

    /// The section's fenced code blocks in `language` (`toml`, `sh`, `ini`, ...), in order,
    /// each without its fences and ending with a newline.
    /// - Throws: when the section has not exactly `count` of them.
    func blocks(_ language: String, count: Int) throws -> [String] {
        let blocks = text.components(separatedBy: "```\(language)\n").dropFirst().compactMap {
            $0.components(separatedBy: "\n```").first.map { $0 + "\n" }
        }
        guard blocks.count == count else {
            throw HarnessError.failed("the README's section has \(blocks.count) \(language) blocks, not \(count)")
        }
        return blocks
    }

    /// The section's one code block in `language`.
    /// - Throws: when it has none or several.
    func block(_ language: String) throws -> String { try blocks(language, count: 1)[0] }

    /// The text of the here-document that the section writes to `path` (`cat > PATH <<'EOF'`).
    /// - Throws: when it writes none.
    func hereDocument(_ path: String) throws -> String {
        guard let start = text.range(of: "cat > \(path) <<'EOF'\n"),
              let end = text.range(of: "\nEOF\n", range: start.upperBound..<text.endIndex) else {
            throw HarnessError.failed("the README's section writes no \(path)")
        }
        return String(text[start.upperBound..<end.lowerBound]) + "\n"
    }
}
