import Foundation
import XCTest
@testable import MDExportCore

enum Fixtures {
    struct MissingResource: Error, CustomStringConvertible {
        let name: String
        var description: String { "test resource \(name) not found in the test bundle" }
    }

    /// A file from Tests/MDExportCoreTests/Resources (copied into the test bundle as "Resources").
    static func resourceURL(_ name: String) throws -> URL {
        let url = URL(fileURLWithPath: name)
        let base = url.deletingPathExtension().lastPathComponent
        let ext = url.pathExtension
        guard let found = Bundle.module.url(forResource: base, withExtension: ext, subdirectory: "Resources") else {
            throw MissingResource(name: name)
        }
        return found
    }

    static func resourceData(_ name: String) throws -> Data {
        try Data(contentsOf: resourceURL(name))
    }

    static func decode<T: Decodable>(_ type: T.Type, from name: String) throws -> T {
        try JSONDecoder().decode(type, from: resourceData(name))
    }

    /// The repository's committed CLIP tokenizer (src/md_export/default_model/tokenizer), found relative to
    /// this file so the 1.5 MB vocabulary is not copied into the test target.
    static var repoTokenizerFolder: URL {
        URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent() // MDExportCoreTests
            .deletingLastPathComponent() // Tests
            .deletingLastPathComponent() // ios_demo
            .deletingLastPathComponent() // repository root
            .appendingPathComponent("src/md_export/default_model/tokenizer", isDirectory: true)
    }

    static func manifest() throws -> Manifest {
        try Manifest.decode(resourceData("fixture_manifest.json"))
    }

    static func manifestText() throws -> String {
        try String(decoding: resourceData("fixture_manifest.json"), as: UTF8.self)
    }

    /// A bundle whose UNet is split in 3 chunks (`md-export coreml --chunk-unet --chunk-limit-mb 1` on the
    /// default model; manifest trimmed of the keys the app ignores).
    static func chunkedManifest() throws -> Manifest {
        try Manifest.decode(resourceData("chunked_manifest.json"))
    }

    /// Loaded once for all tests (the vocabulary has 49,408 entries).
    static let sharedTokenizer: Result<ClipTokenizer, Error> = Result {
        let folder = repoTokenizerFolder
        return try ClipTokenizer(vocabURL: folder.appendingPathComponent("vocab.json"),
                                 mergesURL: folder.appendingPathComponent("merges.txt"),
                                 bosTokenId: 49406, eosTokenId: 49407, padTokenId: 49407, maxLength: 77)
    }

    static func tokenizer() throws -> ClipTokenizer {
        try sharedTokenizer.get()
    }

    /// The default model's scheduler_config.json (EulerDiscreteScheduler, scaled_linear, leading, offset 1).
    static func sdSchedulerConfig() -> SchedulerConfig {
        var config = SchedulerConfig()
        config.className = "EulerDiscreteScheduler"
        config.numTrainTimesteps = 1000
        config.betaStart = 0.00085
        config.betaEnd = 0.012
        config.betaSchedule = "scaled_linear"
        config.predictionType = "epsilon"
        config.stepsOffset = 1
        config.timestepSpacing = "leading"
        config.finalSigmasType = "zero"
        config.interpolationType = "linear"
        return config
    }
}

/// |a - b| <= atol + rtol * |b| for every element, with a message naming the first difference.
func assertClose(_ actual: [Double], _ expected: [Double], rtol: Double, atol: Double, _ message: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        XCTFail("\(message): \(actual.count) values, expected \(expected.count)", file: file, line: line)
        return
    }
    for (i, (a, e)) in zip(actual, expected).enumerated() where abs(a - e) > atol + rtol * abs(e) {
        XCTFail("\(message): [\(i)] = \(a), expected \(e)", file: file, line: line)
        return
    }
}

func assertClose(_ actual: [Float], _ expected: [Double], rtol: Double, atol: Double, _ message: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    assertClose(actual.map { Double($0) }, expected, rtol: rtol, atol: atol, message, file: file, line: line)
}
