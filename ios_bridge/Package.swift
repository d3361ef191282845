// swift-tools-version:5.9
import PackageDescription

let package = Package(
    name: "MekiBridge",
    platforms: [.iOS(.v16), .macOS(.v13)],   // the Core ML generator needs iOS 18 / macOS 15 (MLState)
    products: [.library(name: "MekiBridge", targets: ["MekiBridge"])],
    targets: [
        .target(name: "MekiBridge"),
        // Resources/golden is filled by `meki bundle --golden-ios` (pipeline.bundle_apps.copy_golden_ios);
        // without it the tests fall back to ../conformance/golden of the repository.
        .testTarget(name: "MekiBridgeTests", dependencies: ["MekiBridge"], resources: [.copy("Resources")]),
    ]
)
