// swift-tools-version: 6.1
// libFuzzer targets for the readers of untrusted input (`make fuzz`). Built on their own,
// with `-sanitize=fuzzer,address`, so that the product's own build never needs the flag.
import PackageDescription

let targets = ["configuration", "state", "control", "bundle"]

let package = Package(
    name: "backstop-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "backstop", path: "..")],
    targets: [
        .target(name: "CFuzzer"),
        .target(name: "FuzzDriver", dependencies: ["CFuzzer", .product(name: "BackstopCore", package: "backstop")]),
    ] + targets.map { name in
        .executableTarget(
            name: "fuzz-\(name)",
            dependencies: ["FuzzDriver"],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        )
    },
    swiftLanguageModes: [.v6]
)
