import XCTest
@testable import MDExportCore

final class ManifestTests: XCTestCase {
    func testParsesFixtureManifest() throws {
        let m = try Fixtures.manifest()
        XCTAssertEqual(m.schemaVersion, 1)
        XCTAssertEqual(m.target, "coreml")
        XCTAssertEqual(m.mdExportVersion, "0.1.0")
        XCTAssertEqual(m.pipeline.imageHeight, 128)
        XCTAssertEqual(m.pipeline.imageWidth, 128)
        XCTAssertEqual(m.pipeline.latentShape, [1, 4, 16, 16])
        XCTAssertEqual(m.pipeline.vaeScalingFactor, 0.18215, accuracy: 1e-12)
        XCTAssertEqual(m.pipeline.vaeShiftFactor, 0.0)
        XCTAssertTrue(m.pipeline.decoderAppliesScaling)
        XCTAssertEqual(try m.pipeline.guidanceMode(), .cfgBatch2)
        XCTAssertEqual(m.pipeline.unetBatch, 2)
        XCTAssertEqual(m.pipeline.defaultSteps, 20)
        XCTAssertEqual(m.pipeline.defaultGuidanceScale, 7.5)
        XCTAssertEqual(m.pipeline.scheduler, "euler")
        XCTAssertEqual(m.pipeline.textMaxLength, 77)
        XCTAssertEqual(m.pipeline.textHiddenSize, 32)
        XCTAssertEqual(m.pipeline.tokenizer.vocab, "tokenizer/vocab.json")
        XCTAssertEqual(m.pipeline.tokenizer.merges, "tokenizer/merges.txt")
        XCTAssertEqual(m.pipeline.tokenizer.bosTokenId, 49406)
        XCTAssertEqual(m.pipeline.tokenizer.eosTokenId, 49407)
        XCTAssertEqual(m.pipeline.tokenizer.padTokenId, 49407)
        XCTAssertEqual(Set(m.models.keys), ["text_encoder", "unet", "vae_decoder"])

        let unet = try m.model("unet")
        XCTAssertEqual(unet.file, "unet.mlpackage")
        XCTAssertEqual(unet.inputs.map(\.name), ["sample", "timestep", "encoder_hidden_states"])
        XCTAssertEqual(unet.input(named: "sample")?.dtype, .float16)
        XCTAssertEqual(unet.input(named: "sample")?.shape, [2, 4, 16, 16])
        XCTAssertEqual(unet.input(named: "timestep")?.layout, "B")
        XCTAssertEqual(unet.output(named: "noise_pred")?.dtype, .float32)
        XCTAssertEqual(unet.bytes, 820_000)
        XCTAssertEqual(try m.model("text_encoder").input(named: "input_ids")?.dtype, .int32)
        XCTAssertEqual(m.parity?.status, "pass")
    }

    func testRejectsOtherSchemaVersions() throws {
        let text = try Fixtures.manifestText().replacingOccurrences(of: "\"schema_version\": 1", with: "\"schema_version\": 2")
        XCTAssertThrowsError(try Manifest.decode(Data(text.utf8))) { error in
            XCTAssertEqual(error as? ManifestError, .unsupportedSchemaVersion(found: 2, supported: 1))
            XCTAssertTrue((error as? LocalizedError)?.errorDescription?.contains("schema_version 2") ?? false)
        }
    }

    func testSchemaVersionIsCheckedBeforeTheRest() throws {
        // A future manifest may drop keys this app needs; the version message must win.
        XCTAssertThrowsError(try Manifest.decode(Data(#"{"schema_version": 3}"#.utf8))) { error in
            XCTAssertEqual(error as? ManifestError, .unsupportedSchemaVersion(found: 3, supported: 1))
        }
    }

    func testMissingSchemaVersion() {
        XCTAssertThrowsError(try Manifest.decode(Data(#"{"target": "coreml"}"#.utf8))) { error in
            XCTAssertEqual(error as? ManifestError, .missingSchemaVersion)
        }
    }

    func testNotJSON() {
        XCTAssertThrowsError(try Manifest.decode(Data("not json".utf8))) { error in
            guard case .invalidJSON? = error as? ManifestError else {
                return XCTFail("expected invalidJSON, got \(error)")
            }
        }
    }

    func testMissingKeyNamesItsPath() throws {
        let text = try Fixtures.manifestText().replacingOccurrences(of: "\"latent_height\": 16, ", with: "")
        XCTAssertThrowsError(try Manifest.decode(Data(text.utf8))) { error in
            guard case let .invalidJSON(reason)? = error as? ManifestError else {
                return XCTFail("expected invalidJSON, got \(error)")
            }
            XCTAssertTrue(reason.contains("latent_height"), reason)
            XCTAssertTrue(reason.contains("pipeline"), reason)
        }
    }

    func testUnknownGuidanceIsRejected() throws {
        let text = try Fixtures.manifestText().replacingOccurrences(of: "\"cfg-batch2\"", with: "\"cfg-sequential\"")
        XCTAssertThrowsError(try Manifest.decode(Data(text.utf8))) { error in
            guard case let .invalidField(path, reason)? = error as? ManifestError else {
                return XCTFail("expected invalidField, got \(error)")
            }
            XCTAssertEqual(path, "pipeline.guidance")
            XCTAssertTrue(reason.contains("cfg-sequential"))
        }
    }

    func testBatchMustMatchGuidance() throws {
        var m = try Fixtures.manifest()
        m.pipeline.guidance = "none"
        XCTAssertThrowsError(try m.validate()) { error in
            guard case let .invalidField(path, _)? = error as? ManifestError else {
                return XCTFail("expected invalidField, got \(error)")
            }
            XCTAssertEqual(path, "pipeline.unet_batch")
        }
        m.pipeline.unetBatch = 1
        XCTAssertNoThrow(try m.validate())
    }

    func testMissingModelAndTensorAreNamed() throws {
        var m = try Fixtures.manifest()
        m.models["vae_decoder"] = nil
        XCTAssertThrowsError(try m.validate()) { error in
            guard case let .missingModel(name, known)? = error as? ManifestError else {
                return XCTFail("expected missingModel, got \(error)")
            }
            XCTAssertEqual(name, "vae_decoder")
            XCTAssertEqual(Set(known), ["text_encoder", "unet"])
        }

        var m2 = try Fixtures.manifest()
        m2.models["unet"]?.outputs = [TensorSpec(name: "out", shape: [2, 4, 16, 16], dtype: .float32)]
        XCTAssertThrowsError(try m2.validate()) { error in
            XCTAssertEqual(error as? ManifestError, .missingTensor(model: "unet", name: "noise_pred", direction: "output"))
        }
    }

    func testEmbeddedGuidanceNeedsTimestepCond() throws {
        var m = try Fixtures.manifest()
        m.pipeline.guidance = "embedded"
        m.pipeline.unetBatch = 1
        XCTAssertThrowsError(try m.validate()) { error in
            XCTAssertEqual(error as? ManifestError, .missingTensor(model: "unet", name: "timestep_cond", direction: "input"))
        }
        m.models["unet"]?.inputs.append(TensorSpec(name: "timestep_cond", shape: [1, 256], dtype: .float32, layout: "BS"))
        XCTAssertNoThrow(try m.validate())
    }

    func testUnknownKeysAreIgnored() throws {
        let text = try Fixtures.manifestText().replacingOccurrences(
            of: "\"target\": \"coreml\",", with: "\"target\": \"coreml\", \"future_key\": {\"a\": [1, null]},")
        XCTAssertNoThrow(try Manifest.decode(Data(text.utf8)))
    }
}
