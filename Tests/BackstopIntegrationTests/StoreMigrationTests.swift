import BackstopCore
import Foundation
import Testing

/// A store written by a backstopd from before the current tree digest format, opened by this one.
@Suite(
    .serialized, .timeLimit(.minutes(2)),
    .enabled(if: Environment.haveBinaries, "needs the built binaries: run `make test` (or set BACKSTOP_BIN_DIR)"))
struct StoreMigrationTests {
    /// The state file the previous backstopd wrote for agent `demo` after v1 (examples/content/v1-good)
    /// was promoted, v2 (v2-channel-291) crash-looped and was quarantined, and v3 (v3-good) was
    /// staged: its digests are in the old line format and its records name no format.
    static let oldStateFile = Paths.repository + "/Tests/BackstopIntegrationTests/Fixtures/old-digest-state.json"

    @Test("an old store opens with its active, known-good and quarantined versions; digests move to the current format, and the quarantined version stays refused under its id and another")
    func oldStoreOpens() throws {
        let harness = try DaemonHarness(agents: [DaemonHarness.demoAgent()])
        defer { harness.cleanUp() }
        let store = ContentStore(stateDirectory: harness.directory + "/state", agent: "demo")
        // The store as the previous backstopd left it: its versions, the active link and the state file.
        try FileManager.default.createDirectory(atPath: store.versionsDirectory, withIntermediateDirectories: true)
        let samples = [("v1", "v1-good"), ("v2", "v2-channel-291"), ("v3", "v3-good")]
        for (id, sample) in samples { try FileManager.default.copyItem(atPath: Paths.sample(sample), toPath: store.path(of: id)) }
        #expect(symlink("versions/v1", store.activeLink) == 0)
        try FileManager.default.copyItem(atPath: Self.oldStateFile, toPath: store.stateFile)
        let old = try #require(try AgentStateFile.load(path: store.stateFile))
        #expect(old.ledger.versions.map(\.digestFormat) == [nil, nil, nil])

        try harness.start()
        try harness.wait(for: "agent-ready")
        let content = try harness.agent().content
        #expect(content.active == "v1")
        #expect(content.knownGood == "v1")
        #expect(content.quarantined == ["v2"])
        #expect(harness.log.all.contains { $0.contains("Recorded the digests of versions in the current tree digest format") && $0.contains("v1,v2,v3") })

        // The digests are those the current code gives the same content, in the records and in content list.
        let scratch = ContentStore(stateDirectory: harness.directory + "/scratch", agent: "demo")
        var expected: [String: String] = [:]
        for (id, sample) in samples {
            let bundle = try OpenBundle.open(Paths.sample(sample))
            defer { bundle.close() }
            expected[id] = try scratch.stage(from: bundle, id: id, existing: [], rules: StagingRules(), at: Date()).digest
        }
        let listing = try harness.ctl("content", "list", "demo", "--json")
        let versions = try JSONDecoder.backstop.decode([String: [VersionRecord]].self, from: Data(listing.output.utf8))["versions"] ?? []
        #expect(Dictionary(uniqueKeysWithValues: versions.map { ($0.id, $0.digest) }) == expected)
        #expect(versions.allSatisfy { $0.digestFormat == .current })
        let saved = try #require(try AgentStateFile.load(path: store.stateFile))
        #expect(saved.ledger.versions.map(\.digestFormat) == [.current, .current, .current])
        #expect(saved.ledger.versions.map(\.standing) == old.ledger.versions.map(\.standing))

        // Quarantined means never again without a release: not under its id, not under another.
        let activate = try harness.ctl("activate", "demo", "v2")
        #expect(activate.status != 0 && activate.error.contains("quarantined"), "\(activate.error)")
        let again = try harness.ctl("stage", "demo", Paths.sample("v2-channel-291"), "--version", "v2-again")
        #expect(again.status != 0 && again.error.contains("identical to quarantined version \"v2\""), "\(again.error)")
        #expect(try harness.agent().content.active == "v1")
    }
}
