import Foundation
import Testing

/// What `make install` ships besides the binaries: man pages and completions.
@Suite(.enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct InstallTests {
    @Test("The man pages format without warnings", .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/groff"), "needs groff (Debian's groff-base)"))
    func manPages() throws {
        for page in ["backstopctl.1", "backstopd.8"] {
            let result = try Command.run("/usr/bin/groff", ["-man", "-Tutf8", "-ww", "-z", Paths.repository + "/docs/man/" + page])
            #expect(result.status == 0)
            #expect(result.error.isEmpty, "\(page): \(result.error)")
        }
    }

    @Test("systemd-analyze verify accepts backstopd.service without a warning",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "needs systemd-analyze (Debian's systemd)"))
    func unitVerifies() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        // As `make install` renders it, pointing at the built daemon.
        let unit = try String(contentsOfFile: Paths.repository + "/systemd/backstopd.service", encoding: .utf8)
            .replacingOccurrences(of: "@SBINDIR@", with: Paths.binaries)
        try unit.write(toFile: scratch.path + "/backstopd.service", atomically: true, encoding: .utf8)
        let result = try Command.run("/usr/bin/systemd-analyze", ["verify", "--man=no", scratch.path + "/backstopd.service"])
        #expect(result.status == 0)
        #expect(result.error.isEmpty, "\(result.error)")
        #expect(unit.contains("Type=notify") && unit.contains("WatchdogSec=") && unit.contains("Restart=always"))
    }

    @Test("The install tree holds what the journal catalog points at, and its binaries are stripped",
          .enabled(if: Container.installTree != nil, "needs an install tree: run `make test` (or set BACKSTOP_INSTALL_DIR)"))
    func installTree() throws {
        let tree = try #require(Container.installTree)
        let catalog = try String(contentsOfFile: tree + "/usr/lib/systemd/catalog/backstop.catalog", encoding: .utf8)
        let links = Set(catalog.split(separator: "\n").filter { $0.hasPrefix("Support: file://") }.map { $0.dropFirst("Support: file://".count) })
        #expect(!links.isEmpty)
        for link in links { #expect(FileManager.default.fileExists(atPath: tree + link), "the catalog's Support link \(link) is not installed") }
        for binary in ["/usr/sbin/backstopd", "/usr/bin/backstopctl", "/usr/libexec/backstop/backstop-demo-agent"] {
            let sections = try Command.run("/usr/bin/readelf", ["-S", "-W", tree + binary])
            #expect(sections.status == 0 && !sections.output.contains(".symtab") && !sections.output.contains(".debug_info"), "\(binary) is not stripped")
        }
    }

    @Test("Completion scripts are generated for bash, zsh and fish and know every verb", arguments: ["bash", "zsh", "fish"])
    func completions(shell: String) throws {
        let result = try Command.run(Paths.binary("backstopctl"), ["--generate-completion-script", shell])
        #expect(result.status == 0)
        for verb in ["status", "stage", "activate", "rollback", "release", "reset-failed", "stop", "start", "boots", "history"] {
            #expect(result.output.contains(verb), "\(shell) completion lacks \(verb)")
        }
    }
}
