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

    @Test("Completion scripts are generated for bash, zsh and fish and know every verb", arguments: ["bash", "zsh", "fish"])
    func completions(shell: String) throws {
        let result = try Command.run(Paths.binary("backstopctl"), ["--generate-completion-script", shell])
        #expect(result.status == 0)
        for verb in ["status", "stage", "activate", "rollback", "release", "reset-failed", "stop", "start", "boots", "history"] {
            #expect(result.output.contains(verb), "\(shell) completion lacks \(verb)")
        }
    }
}
