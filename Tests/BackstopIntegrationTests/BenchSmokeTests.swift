import Foundation
import Testing

/// `make bench` stays runnable: bench/bench.py's `--smoke` run (a few crashes under
/// backstopd in its default sandbox and under the C floor it compiles, and a small
/// staging against `tar -x` + `sync`) on the built binaries, with a journald of its own.
@Suite(
    .serialized, .timeLimit(.minutes(3)),
    .enabled(if: Environment.isRoot, "needs root: a private mount namespace with its own journald, and bubblewrap"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/lib/systemd/systemd-journald"),
             "needs /lib/systemd/systemd-journald (Debian's systemd package)"),
    .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/cc"), "needs cc, which compiles the C floor"),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct BenchSmokeTests {
    @Test("The benchmark's smoke run measures every crash under backstopd and the C floor, and a staging")
    func smokeRun() throws {
        let crashes = 5
        let result = try Command.run(
            "/usr/bin/python3", [Paths.repository + "/bench/bench.py", "--smoke", "--bin", Paths.binaries, "--crashes", "\(crashes)"])
        try #require(result.status == 0, "bench.py --smoke failed: \(result.error)")
        let figures = try #require(try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: [String: Any]])
        for party in ["backstop", "floor"] {
            for figure in ["detection", "restart"] {
                let summary = figures[party]?[figure] as? [String: Double]
                #expect(summary?["n"] == Double(crashes), "\(party) \(figure): \(String(describing: summary))")
                // Each latency runs from the agent's own timestamp to a later event.
                #expect((summary?["min"] ?? 0) > 0, "\(party) \(figure): \(String(describing: summary))")
            }
        }
        let staging = figures["backstop"]?["staging"] as? [String: Double]
        #expect(staging?["files"] == 100)
        #expect((staging?["stage_s"] ?? 0) > 0 && (staging?["tar_s"] ?? 0) > 0)
    }
}
