import XCTest
@testable import MDExportCore

/// Chunk fake: checks it is fed exactly its manifest inputs (names and shapes), records them, and fills
/// output k with the constant `100 * chunk + k`, so a test can tell which chunk produced what it got.
private final class FakeChunk: DiffusionModel {
    let index: Int
    let spec: ModelFileSpec
    var skippedOutputs: Set<String> = []
    private(set) var feeds: [[String: Tensor]] = []
    private let onRun: (Int) -> Void

    init(index: Int, spec: ModelFileSpec, onRun: @escaping (Int) -> Void) {
        self.index = index
        self.spec = spec
        self.onRun = onRun
    }

    static func value(chunk: Int, output: Int) -> Float { Float(100 * chunk + output) }

    func run(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        onRun(index)
        feeds.append(inputs)
        XCTAssertEqual(Set(inputs.keys), Set(spec.inputs.map(\.name)), "chunk \(index + 1) inputs")
        for input in spec.inputs {
            XCTAssertEqual(inputs[input.name]?.shape, input.shape, "chunk \(index + 1) input \(input.name)")
        }
        var outputs: [String: Tensor] = [:]
        for (k, output) in spec.outputs.enumerated() where !skippedOutputs.contains(output.name) {
            outputs[output.name] = Tensor(repeating: FakeChunk.value(chunk: index, output: k), shape: output.shape)
        }
        return outputs
    }
}

final class ChunkedModelTests: XCTestCase {
    private func unet(_ manifest: Manifest) throws -> ModelSpec { try manifest.model("unet") }

    /// Model inputs with the manifest's shapes, each filled with a negative constant (never a chunk's value).
    private func modelInputs(_ spec: ModelSpec) -> [String: Tensor] {
        var inputs: [String: Tensor] = [:]
        for (k, input) in spec.inputs.enumerated() {
            inputs[input.name] = Tensor(repeating: -Float(k + 1), shape: input.shape)
        }
        return inputs
    }

    private func fakes(_ plan: ChunkPlan, onRun: @escaping (Int) -> Void = { _ in }) -> [FakeChunk] {
        plan.chunks.enumerated().map { FakeChunk(index: $0.offset, spec: $0.element, onRun: onRun) }
    }

    func testDecodesChunkedUNet() throws {
        let m = try Fixtures.chunkedManifest()
        let spec = try unet(m)
        XCTAssertNil(spec.file)
        XCTAssertTrue(spec.isChunked)
        XCTAssertEqual(spec.files, ["UnetChunk1.mlpackage", "UnetChunk2.mlpackage", "UnetChunk3.mlpackage"])
        XCTAssertEqual(spec.inputs.map(\.name), ["sample", "timestep", "encoder_hidden_states"])
        XCTAssertEqual(spec.output(named: "noise_pred")?.shape, [2, 4, 16, 16])
        let chunks = try XCTUnwrap(spec.chunks)
        XCTAssertEqual(chunks.compactMap(\.bytes).reduce(0, +), spec.bytes)
        XCTAssertTrue(chunks.allSatisfy { ($0.sha256?.count ?? 0) == 64 })
        XCTAssertEqual(chunks[1].inputs.first { $0.name == "conv2d_15_cast_fp16_1" }?.shape, [2, 32, 8, 8])

        let textEncoder = try m.model("text_encoder")
        XCTAssertFalse(textEncoder.isChunked)
        XCTAssertEqual(textEncoder.files, ["text_encoder.mlpackage"])
        XCTAssertEqual(textEncoder.fileSpecs.first?.sha256, textEncoder.sha256)
        XCTAssertEqual(textEncoder.fileSpecs.first?.inputs, textEncoder.inputs)
        XCTAssertEqual(try Fixtures.manifest().model("unet").files, ["unet.mlpackage"])
    }

    func testPlanFeedsEachChunkItsManifestInputs() throws {
        let spec = try unet(Fixtures.chunkedManifest())
        let plan = try ChunkPlan(model: "unet", spec: spec)
        XCTAssertEqual(plan.feeds.count, 3)
        XCTAssertEqual(plan.feeds[0], ["sample", "timestep", "encoder_hidden_states"])
        XCTAssertEqual(plan.feeds, try XCTUnwrap(spec.chunks).map { $0.inputs.map(\.name) })
        XCTAssertEqual(plan.releases.last, [])
    }

    /// After chunk i, exactly the tensors a later chunk still takes are held.
    private func assertReleasesKeepOnlyWhatIsNeeded(_ plan: ChunkPlan, _ spec: ModelSpec,
                                                    file: StaticString = #filePath, line: UInt = #line) {
        var held = Set(spec.inputs.map(\.name))
        for i in 0 ..< plan.chunks.count - 1 {
            held.formUnion(plan.chunks[i].outputs.map(\.name))
            held.subtract(plan.releases[i])
            let later = Set(plan.feeds[(i + 1)...].joined())
            let neededNow = later.subtracting(plan.chunks[(i + 1)...].flatMap { $0.outputs.map(\.name) })
            XCTAssertTrue(neededNow.isSubset(of: held), "chunk \(i + 1) released a tensor a later chunk takes",
                          file: file, line: line)
            XCTAssertTrue(held.isSubset(of: later), "after chunk \(i + 1) still holding \(held.subtracting(later))",
                          file: file, line: line)
        }
    }

    func testReleasesDropTensorsNoLaterChunkTakes() throws {
        let spec = try unet(Fixtures.chunkedManifest())
        let plan = try ChunkPlan(model: "unet", spec: spec)
        assertReleasesKeepOnlyWhatIsNeeded(plan, spec)
        // In this export chunk 3 takes only chunk 2's outputs: the model inputs go after chunk 1.
        XCTAssertTrue(Set(["sample", "timestep", "encoder_hidden_states"]).isSubset(of: plan.releases[0]))

        // A last chunk that also takes a model input and a chunk-1 output keeps them held until it runs.
        let sample = try XCTUnwrap(spec.input(named: "sample"))
        let firstChunkOutput = try XCTUnwrap(spec.chunks?[0].outputs.first { $0.name == "add_13_cast_fp16" })
        var reachingBack = spec
        reachingBack.chunks?[2].inputs += [sample, firstChunkOutput]
        let reachingBackPlan = try ChunkPlan(model: "unet", spec: reachingBack)
        assertReleasesKeepOnlyWhatIsNeeded(reachingBackPlan, reachingBack)
        XCTAssertFalse(reachingBackPlan.releases[0].contains("sample"))
        XCTAssertFalse(reachingBackPlan.releases[1].contains("sample"))
        XCTAssertFalse(reachingBackPlan.releases[1].contains("add_13_cast_fp16"))
        XCTAssertTrue(reachingBackPlan.releases[0].contains("timestep"))
    }

    func testRunsChunksInOrderPassingTensorsByName() throws {
        let spec = try unet(Fixtures.chunkedManifest())
        let plan = try ChunkPlan(model: "unet", spec: spec)
        var order: [Int] = []
        let chunks = fakes(plan) { order.append($0) }
        let model = ChunkedModel(plan: plan, chunks: chunks)
        let inputs = modelInputs(spec)

        let outputs = try model.run(inputs)

        XCTAssertEqual(order, [0, 1, 2])
        // Every tensor a chunk got is the one its latest producer made (a model input, or an earlier output).
        for (j, chunk) in chunks.enumerated() {
            let feed = try XCTUnwrap(chunk.feeds.first)
            for name in plan.feeds[j] {
                let producer = (0 ..< j).reversed().first { p in plan.chunks[p].outputs.contains { $0.name == name } }
                let expected: Tensor
                if let p = producer {
                    let k = try XCTUnwrap(plan.chunks[p].outputs.firstIndex { $0.name == name })
                    expected = Tensor(repeating: FakeChunk.value(chunk: p, output: k), shape: plan.chunks[p].outputs[k].shape)
                } else {
                    expected = try XCTUnwrap(inputs[name])
                }
                XCTAssertEqual(feed[name], expected, "chunk \(j + 1) input \(name)")
            }
        }
        XCTAssertEqual(Set(outputs.keys), ["noise_pred"])
        XCTAssertEqual(outputs["noise_pred"], Tensor(repeating: FakeChunk.value(chunk: 2, output: 0), shape: [2, 4, 16, 16]))

        // The same model runs again (the loop calls it once per step).
        _ = try model.run(inputs)
        XCTAssertEqual(chunks.map(\.feeds.count), [2, 2, 2])
    }

    func testChunkInputProducedByNobodyIsRefused() throws {
        var m = try Fixtures.chunkedManifest()
        m.models["unet"]?.chunks?[0].outputs.removeAll { $0.name == "conv2d_15_cast_fp16_1" }
        XCTAssertThrowsError(try m.validate()) { error in
            XCTAssertEqual(error as? ManifestError, .chunkInputNotProduced(
                model: "unet", chunk: 2, file: "UnetChunk2.mlpackage", name: "conv2d_15_cast_fp16_1"))
            let text = (error as? LocalizedError)?.errorDescription ?? ""
            XCTAssertTrue(text.contains("UnetChunk2.mlpackage") && text.contains("conv2d_15_cast_fp16_1"), text)
        }

        // A tensor made by a later chunk does not count for an earlier one.
        var m2 = try Fixtures.chunkedManifest()
        let late = try XCTUnwrap(m2.models["unet"]?.chunks?[1].outputs[0])
        m2.models["unet"]?.chunks?[0].inputs.append(late)
        XCTAssertThrowsError(try m2.validate()) { error in
            XCTAssertEqual(error as? ManifestError, .chunkInputNotProduced(
                model: "unet", chunk: 1, file: "UnetChunk1.mlpackage", name: late.name))
        }
    }

    func testLastChunkMustOutputTheModelOutputs() throws {
        var m = try Fixtures.chunkedManifest()
        m.models["unet"]?.chunks?.removeLast()
        XCTAssertThrowsError(try m.validate()) { error in
            XCTAssertEqual(error as? ManifestError,
                           .chunkOutputMissing(model: "unet", file: "UnetChunk2.mlpackage", name: "noise_pred"))
        }
    }

    func testEntryNeedsFileOrChunksNotBoth() throws {
        var neither = try Fixtures.chunkedManifest()
        neither.models["unet"]?.chunks = nil
        XCTAssertThrowsError(try neither.validate()) { error in
            XCTAssertEqual(error as? ManifestError, .noModelFile(model: "unet"))
            XCTAssertTrue((error as? LocalizedError)?.errorDescription?.contains("\"unet\"") ?? false)
        }
        var both = try Fixtures.chunkedManifest()
        both.models["unet"]?.file = "unet.mlpackage"
        XCTAssertThrowsError(try both.validate()) { error in
            XCTAssertEqual(error as? ManifestError, .fileAndChunks(model: "unet"))
        }
        var empty = try Fixtures.chunkedManifest()
        empty.models["unet"]?.chunks = []
        XCTAssertThrowsError(try empty.validate()) { error in
            XCTAssertEqual(error as? ManifestError, .noModelFile(model: "unet"))
        }
    }

    func testTensorMissingAtRunTimeNamesTheChunk() throws {
        let spec = try unet(Fixtures.chunkedManifest())
        let plan = try ChunkPlan(model: "unet", spec: spec)
        let chunks = fakes(plan)
        chunks[0].skippedOutputs = ["silu_2_cast_fp16_1"]
        let model = ChunkedModel(plan: plan, chunks: chunks)
        XCTAssertThrowsError(try model.run(modelInputs(spec))) { error in
            guard case let .missingInput(modelName, chunk, file, name, _)? = error as? ChunkRunError else {
                return XCTFail("expected missingInput, got \(error)")
            }
            XCTAssertEqual([modelName, file, name], ["unet", "UnetChunk2.mlpackage", "silu_2_cast_fp16_1"])
            XCTAssertEqual(chunk, 2)
        }
        XCTAssertTrue(chunks[2].feeds.isEmpty)

        var noTimestep = modelInputs(spec)
        noTimestep["timestep"] = nil
        XCTAssertThrowsError(try ChunkedModel(plan: plan, chunks: fakes(plan)).run(noTimestep)) { error in
            guard case let .missingInput(_, chunk, _, name, _)? = error as? ChunkRunError else {
                return XCTFail("expected missingInput, got \(error)")
            }
            XCTAssertEqual(chunk, 1)
            XCTAssertEqual(name, "timestep")
        }
    }
}
