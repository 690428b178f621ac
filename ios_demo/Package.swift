// swift-tools-version:5.9
//
// MDExportCore: the platform-neutral part of the md-export iOS demo (manifest, CLIP tokenizer,
// schedulers, denoising loop, image conversion). Pure Swift + Foundation, no Core ML, so it builds
// and tests with `swift test` on macOS. The SwiftUI app in App/ (MDExportDemo.xcodeproj) depends on it.

import PackageDescription

let package = Package(
    name: "MDExportCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "MDExportCore", targets: ["MDExportCore"]),
    ],
    targets: [
        .target(
            name: "MDExportCore",
            path: "Sources/MDExportCore"
        ),
        .testTarget(
            name: "MDExportCoreTests",
            dependencies: ["MDExportCore"],
            path: "Tests/MDExportCoreTests",
            resources: [.copy("Resources")]
        ),
    ]
)
