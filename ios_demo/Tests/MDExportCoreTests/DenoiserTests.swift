import XCTest
@testable import MDExportCore

/// Text encoder fake: every value of last_hidden_state is the position of the first eos token, so ""
/// gives 1 and "a photo of a cat" gives 6; rows of the UNet's hidden states can be told apart.
private final class FakeTextEncoder: DiffusionModel {
    let hiddenSize: Int
    private(set) var calls: [[Float]] = []

    init(hiddenSize: Int) { self.hiddenSize = hiddenSize }

    func run(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        let ids = try XCTUnwrap(inputs["input_ids"])
        XCTAssertEqual(ids.shape, [1, 77])
        calls.append(ids.scalars)
        let marker = Float(ids.scalars.firstIndex(of: 49407) ?? 0)
        return ["last_hidden_state": Tensor(repeating: marker, shape: [1, 77, hiddenSize])]
    }
}

/// UNet fake: row b of noise_pred is 0.01 * encoder_hidden_states[b, 0, 0]; records every call.
private final class FakeUNet: DiffusionModel {
    private(set) var calls: [[String: Tensor]] = []
    var outputName = "noise_pred"

    func run(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        calls.append(inputs)
        let sample = try XCTUnwrap(inputs["sample"])
        let hidden = try XCTUnwrap(inputs["encoder_hidden_states"])
        let batch = sample.shape[0]
        let perRow = sample.count / batch
        let perHiddenRow = hidden.count / hidden.shape[0]
        var values: [Float] = []
        for b in 0 ..< batch {
            values += [Float](repeating: 0.01 * hidden.scalars[b * perHiddenRow], count: perRow)
        }
        let noisePred = try Tensor(shape: sample.shape, scalars: values)
        return [outputName: noisePred]
    }
}

/// Decoder fake: records its input and returns a mid-grey image.
private final class FakeDecoder: DiffusionModel {
    private(set) var inputs: [Tensor] = []
    let height: Int
    let width: Int

    init(height: Int, width: Int) {
        self.height = height
        self.width = width
    }

    func run(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        let latent = try XCTUnwrap(inputs["latent"])
        self.inputs.append(latent)
        return ["image": Tensor(zeros: [1, 3, height, width])]
    }
}

final class DenoiserTests: XCTestCase {
    private var manifest: Manifest!
    private var textEncoder: FakeTextEncoder!
    private var unet: FakeUNet!
    private var decoder: FakeDecoder!

    override func setUpWithError() throws {
        manifest = try Fixtures.manifest()
        textEncoder = FakeTextEncoder(hiddenSize: manifest.pipeline.textHiddenSize)
        unet = FakeUNet()
        decoder = FakeDecoder(height: manifest.pipeline.imageHeight, width: manifest.pipeline.imageWidth)
    }

    private func makeDenoiser() throws -> Denoiser {
        Denoiser(manifest: manifest, tokenizer: try Fixtures.tokenizer(), schedulerConfig: Fixtures.sdSchedulerConfig(),
                 textEncoder: textEncoder, unet: unet, decoder: decoder)
    }

    private func parameters(steps: Int, scale: Double = 7.5, scheduler: SchedulerKind = .euler) -> GenerationParameters {
        GenerationParameters(prompt: "a photo of a cat", steps: steps, seed: 42, guidanceScale: scale, scheduler: scheduler)
    }

    /// The latent after one Euler step with a constant model output `eps`, computed independently.
    private func expectedOneStepEulerLatent(eps: Float) throws -> Tensor {
        let scheduler = try EulerDiscreteScheduler(config: Fixtures.sdSchedulerConfig(), steps: 1)
        var rng = TorchRandom(seed: 42)
        let x = rng.normalTensor(shape: manifest.pipeline.latentShape).scaled(by: Float(scheduler.initNoiseSigma))
        let sigma0 = Float(scheduler.sigmas[0])
        // epsilon prediction: x0 = x - sigma * eps; derivative = eps; prev = x + eps * (0 - sigma).
        return x.map { $0 - eps * sigma0 }
    }

    func testCFGBatchLayout() throws {
        let image = try makeDenoiser().generate(parameters(steps: 3))
        XCTAssertEqual(image.shape, [1, 3, 128, 128])

        // Text encoder: the prompt and "" (order not part of the contract).
        XCTAssertEqual(textEncoder.calls.count, 2)
        let markers = Set(textEncoder.calls.map { $0.firstIndex(of: 49407) ?? -1 })
        XCTAssertEqual(markers, [1, 6])

        XCTAssertEqual(unet.calls.count, 3)
        let expectedTimesteps = try EulerDiscreteScheduler(config: Fixtures.sdSchedulerConfig(), steps: 3).timesteps
        for (i, call) in unet.calls.enumerated() {
            let sample = try XCTUnwrap(call["sample"])
            XCTAssertEqual(sample.shape, [2, 4, 16, 16])
            XCTAssertEqual(try sample.batchRow(0), try sample.batchRow(1), "both rows see the same latent")
            let timestep = try XCTUnwrap(call["timestep"])
            XCTAssertEqual(timestep.shape, [2])
            XCTAssertEqual(timestep.scalars, [Float](repeating: Float(expectedTimesteps[i]), count: 2))
            let hidden = try XCTUnwrap(call["encoder_hidden_states"])
            XCTAssertEqual(hidden.shape, [2, 77, 32])
            XCTAssertTrue(try hidden.batchRow(0).scalars.allSatisfy { $0 == 1 }, "row 0 is unconditional (\"\")")
            XCTAssertTrue(try hidden.batchRow(1).scalars.allSatisfy { $0 == 6 }, "row 1 is the prompt")
            XCTAssertNil(call["timestep_cond"])
        }
    }

    func testCFGCombinationFeedsTheScheduler() throws {
        _ = try makeDenoiser().generate(parameters(steps: 1, scale: 7.5))
        // u = 0.01, c = 0.06: guided = 0.01 + 7.5 * 0.05 = 0.385.
        let expected = try expectedOneStepEulerLatent(eps: 0.385)
        let got = try XCTUnwrap(decoder.inputs.first)
        assertClose(got.scalars, expected.scalars.map { Double($0) }, rtol: 1e-5, atol: 1e-5, "decoder input")
    }

    func testCombineGuidance() throws {
        let u = try Tensor(shape: [1, 2], scalars: [1, -2])
        let c = try Tensor(shape: [1, 2], scalars: [3, 0])
        XCTAssertEqual(try Denoiser.combineGuidance(unconditional: u, conditional: c, scale: 2).scalars, [5, 2])
        XCTAssertEqual(try Denoiser.combineGuidance(unconditional: u, conditional: c, scale: 1).scalars, c.scalars)
    }

    func testDecoderScalingIsAppliedOnlyWhenTheDecoderDoesNot() throws {
        manifest.pipeline.decoderAppliesScaling = false
        manifest.pipeline.vaeShiftFactor = 0.25
        _ = try makeDenoiser().generate(parameters(steps: 1))
        let expected = try expectedOneStepEulerLatent(eps: 0.385).map { $0 / 0.18215 + 0.25 }
        let got = try XCTUnwrap(decoder.inputs.first)
        assertClose(got.scalars, expected.scalars.map { Double($0) }, rtol: 1e-5, atol: 1e-4, "decoder input")
    }

    func testNoGuidanceRunsBatchOne() throws {
        manifest.pipeline.guidance = "none"
        manifest.pipeline.unetBatch = 1
        _ = try makeDenoiser().generate(parameters(steps: 1, scale: 7.5))
        XCTAssertEqual(textEncoder.calls.count, 1)
        let call = try XCTUnwrap(unet.calls.first)
        XCTAssertEqual(call["sample"]?.shape, [1, 4, 16, 16])
        XCTAssertEqual(call["timestep"]?.shape, [1])
        XCTAssertEqual(call["encoder_hidden_states"]?.shape, [1, 77, 32])
        XCTAssertTrue(call["encoder_hidden_states"]?.scalars.allSatisfy { $0 == 6 } ?? false)
        // The scale is ignored: the model output (0.06) goes to the scheduler unchanged.
        let expected = try expectedOneStepEulerLatent(eps: 0.06)
        assertClose(try XCTUnwrap(decoder.inputs.first).scalars, expected.scalars.map { Double($0) },
                    rtol: 1e-5, atol: 1e-5, "decoder input")
    }

    func testEmbeddedGuidanceFeedsTimestepCond() throws {
        manifest.pipeline.guidance = "embedded"
        manifest.pipeline.unetBatch = 1
        manifest.models["unet"]?.inputs.append(TensorSpec(name: "timestep_cond", shape: [1, 8], dtype: .float32))
        try manifest.validate()
        _ = try makeDenoiser().generate(parameters(steps: 2, scale: 4, scheduler: .lcm))
        XCTAssertEqual(unet.calls.count, 2)
        let cond = try XCTUnwrap(unet.calls.first?["timestep_cond"])
        XCTAssertEqual(cond.shape, [1, 8])
        XCTAssertEqual(cond.scalars, guidanceScaleEmbedding(guidanceScale: 4, dimension: 8))
        XCTAssertEqual(unet.calls.map { $0["timestep"]?.scalars.first }, [999, 499])
    }

    func testProgressAndCancellation() throws {
        var seen: [GenerationProgress] = []
        _ = try makeDenoiser().denoise(parameters(steps: 4)) { progress in
            seen.append(progress)
            return true
        }
        XCTAssertEqual(seen.map(\.step), [1, 2, 3, 4])
        XCTAssertTrue(seen.allSatisfy { $0.totalSteps == 4 })

        XCTAssertThrowsError(try makeDenoiser().denoise(parameters(steps: 4)) { $0.step < 2 }) { error in
            XCTAssertEqual(error as? DenoiserError, .cancelled)
        }
    }

    func testMissingUNetOutputIsNamed() throws {
        unet.outputName = "out"
        XCTAssertThrowsError(try makeDenoiser().generate(parameters(steps: 1))) { error in
            XCTAssertEqual(error as? DenoiserError, .missingOutput(model: "unet", name: "noise_pred", got: ["out"]))
        }
    }

    func testSameSeedSameResult() throws {
        let a = try makeDenoiser().denoise(parameters(steps: 2))
        let b = try makeDenoiser().denoise(parameters(steps: 2))
        XCTAssertEqual(a, b)
        var other = parameters(steps: 2)
        other.seed = 7
        XCTAssertNotEqual(try makeDenoiser().denoise(other), a)
    }
}

final class ImageConversionTests: XCTestCase {
    func testNCHWToRGBA() throws {
        // 1 x 2 image: pixel 0 = (-1, 0, 1), pixel 1 = (1, -1, 0.5).
        let t = try Tensor(shape: [1, 3, 1, 2], scalars: [-1, 1, 0, -1, 1, 0.5])
        let image = try ImageConversion.rgba(fromNCHW: t)
        XCTAssertEqual(image.width, 2)
        XCTAssertEqual(image.height, 1)
        // 0 -> 127.5 -> 128 (half to even); 0.5 -> 0.75 * 255 = 191.25 -> 191.
        XCTAssertEqual(image.pixels, [0, 128, 255, 255, 255, 0, 191, 255])
    }

    func testClampsAndRejectsBadShapes() throws {
        let t = try Tensor(shape: [3, 1, 1], scalars: [-5, 5, .nan])
        XCTAssertEqual(try ImageConversion.rgba(fromNCHW: t).pixels, [0, 255, 0, 255])
        XCTAssertThrowsError(try ImageConversion.rgba(fromNCHW: Tensor(zeros: [1, 4, 2, 2])))
    }
}

final class TensorTests: XCTestCase {
    func testBatchRowsAndConcatenation() throws {
        let t = try Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try t.batchRow(1), try Tensor(shape: [1, 3], scalars: [4, 5, 6]))
        XCTAssertEqual(try Tensor.concatenateBatch([t.batchRow(1), t.batchRow(0)]).scalars, [4, 5, 6, 1, 2, 3])
        XCTAssertThrowsError(try t.batchRow(2))
        XCTAssertThrowsError(try Tensor(shape: [2, 2], scalars: [1]))
        XCTAssertThrowsError(try Tensor.concatenateBatch([t, Tensor(zeros: [1, 2])]))
    }
}
