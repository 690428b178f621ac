import XCTest
@testable import MDExportCore

private struct SchedulerGoldens: Decodable {
    struct Case: Decodable {
        let name: String
        let config: SchedulerConfig
        let steps: Int
        let timesteps: [Double]
        let initNoiseSigma: Double
        let scaledModelInput: [[Double]]
        let prevSample: [[Double]]
        let sigmas: [Double]?
        let denoised: [[Double]]?

        enum CodingKeys: String, CodingKey {
            case name, config, steps, timesteps, sigmas, denoised
            case initNoiseSigma = "init_noise_sigma"
            case scaledModelInput = "scaled_model_input"
            case prevSample = "prev_sample"
        }
    }

    /// md_export.pipeline.schedulers built from an old Euler config with (cfg-batch2, none) and without
    /// (embedded) the pipeline's config rewrite; evaluated on 4 * step_sample and 4 * step_model_output.
    struct RewriteCase: Decodable {
        let scheduler: String
        let guidance: String
        let steps: Int
        let config: SchedulerConfig
        let timesteps: [Double]
        let prevSample: [[Double]]

        enum CodingKeys: String, CodingKey {
            case scheduler, guidance, steps, config, timesteps
            case prevSample = "prev_sample"
        }
    }

    let stepSample: [Float]
    let stepModelOutput: [Float]
    let cases: [Case]
    let rewriteCases: [RewriteCase]

    enum CodingKeys: String, CodingKey {
        case stepSample = "step_sample"
        case stepModelOutput = "step_model_output"
        case cases
        case rewriteCases = "rewrite_cases"
    }
}

private struct GuidanceEmbeddingGoldens: Decodable {
    struct Case: Decodable {
        let guidanceScale: Double
        let embeddingDim: Int
        let embedding: [Double]

        enum CodingKeys: String, CodingKey {
            case guidanceScale = "guidance_scale"
            case embeddingDim = "embedding_dim"
            case embedding
        }
    }

    let cases: [Case]
}

final class SchedulerTests: XCTestCase {
    private func kind(for className: String?) -> SchedulerKind? {
        switch className {
        case "EulerDiscreteScheduler": return .euler
        case "DDIMScheduler": return .ddim
        case "LCMScheduler": return .lcm
        case "DPMSolverMultistepScheduler": return .dpmpp2m
        default: return nil
        }
    }

    func testMatchesDiffusersGoldens() throws {
        let goldens = try Fixtures.decode(SchedulerGoldens.self, from: "scheduler_goldens.json")
        let sample = try Tensor(shape: [goldens.stepSample.count], scalars: goldens.stepSample)
        let modelOutput = try Tensor(shape: [goldens.stepModelOutput.count], scalars: goldens.stepModelOutput)
        XCTAssertGreaterThan(goldens.cases.count, 20)
        for c in goldens.cases {
            let label = "\(c.name) steps=\(c.steps)"
            guard let kind = kind(for: c.config.className) else {
                XCTFail("\(label): unknown class \(c.config.className ?? "nil")")
                continue
            }
            let scheduler = try makeScheduler(kind: kind, config: c.config, steps: c.steps)
            assertClose(scheduler.timesteps, c.timesteps, rtol: 0, atol: 1e-3, "\(label) timesteps")
            assertClose([scheduler.initNoiseSigma], [c.initNoiseSigma], rtol: 2e-5, atol: 1e-7, "\(label) init_noise_sigma")
            if let sigmas = c.sigmas {
                let own = (scheduler as? EulerDiscreteScheduler)?.sigmas ?? (scheduler as? DPMSolverMultistepScheduler)?.sigmas
                assertClose(try XCTUnwrap(own), sigmas, rtol: 2e-5, atol: 1e-6, "\(label) sigmas")
            }
            for i in 0 ..< scheduler.timesteps.count {
                let scaled = scheduler.scaleModelInput(sample, stepIndex: i)
                assertClose(scaled.scalars, c.scaledModelInput[i], rtol: 2e-5, atol: 1e-6, "\(label) scaled[\(i)]")
                // LCM goldens were made with zero injected noise.
                let out = try scheduler.step(modelOutput: modelOutput, stepIndex: i, sample: sample,
                                             noise: { Tensor(zeros: sample.shape) })
                assertClose(out.prevSample.scalars, c.prevSample[i], rtol: 2e-5, atol: 2e-5, "\(label) prev[\(i)]")
                if let denoised = c.denoised {
                    assertClose(out.predictedOriginal.scalars, denoised[i], rtol: 2e-5, atol: 2e-5,
                                "\(label) denoised[\(i)]")
                }
            }
        }
    }

    func testPipelineConfigRewriteMatchesPython() throws {
        let goldens = try Fixtures.decode(SchedulerGoldens.self, from: "scheduler_goldens.json")
        let sample = try Tensor(shape: [goldens.stepSample.count], scalars: goldens.stepSample.map { $0 * 4 })
        let modelOutput = try Tensor(shape: [goldens.stepModelOutput.count], scalars: goldens.stepModelOutput.map { $0 * 4 })
        XCTAssertEqual(goldens.rewriteCases.count, 4)
        for c in goldens.rewriteCases {
            let label = "\(c.scheduler) \(c.guidance) steps=\(c.steps)"
            let mode = try XCTUnwrap(GuidanceMode(rawValue: c.guidance))
            let kind = try XCTUnwrap(SchedulerKind(rawValue: c.scheduler))
            let scheduler = try makeScheduler(kind: kind, config: c.config.rewritten(for: mode), steps: c.steps)
            assertClose(scheduler.timesteps, c.timesteps, rtol: 0, atol: 1e-3, "\(label) timesteps")
            for i in 0 ..< scheduler.timesteps.count {
                let out = try scheduler.step(modelOutput: modelOutput, stepIndex: i, sample: sample,
                                             noise: { Tensor(zeros: sample.shape) })
                assertClose(out.prevSample.scalars, c.prevSample[i], rtol: 2e-5, atol: 2e-5, "\(label) prev[\(i)]")
            }
        }
        let old = goldens.rewriteCases[0].config
        XCTAssertEqual(old.stepsOffset, 0)
        XCTAssertEqual(old.rewritten(for: .cfgBatch2).stepsOffset, 1)
        XCTAssertEqual(old.rewritten(for: .none).clipSample, false)
        XCTAssertEqual(old.rewritten(for: .embedded), old)
    }

    func testDPMSolverRunsStepsInOrder() throws {
        let scheduler = try DPMSolverMultistepScheduler(config: Fixtures.sdSchedulerConfig(), steps: 4)
        let x = Tensor(repeating: 1, shape: [4])
        _ = try scheduler.step(modelOutput: x, stepIndex: 0, sample: x, noise: { x })
        XCTAssertThrowsError(try scheduler.step(modelOutput: x, stepIndex: 2, sample: x, noise: { x }))
    }

    func testTrailingSpacingRoundsHalfToEven() throws {
        var config = Fixtures.sdSchedulerConfig()
        config.timestepSpacing = "trailing"
        let scheduler = try EulerDiscreteScheduler(config: config, steps: 16)
        // 1000 - 62.5 * k: 937.5 -> 938, 875, 812.5 -> 812; minus 1.
        XCTAssertEqual(Array(scheduler.timesteps.prefix(4)), [999, 937, 874, 811])
    }

    func testDefaultModelSchedulerInitNoiseSigma() throws {
        let scheduler = try EulerDiscreteScheduler(config: Fixtures.sdSchedulerConfig(), steps: 20)
        XCTAssertEqual(scheduler.timesteps.first, 951)
        XCTAssertEqual(scheduler.timesteps.last, 1)
        XCTAssertEqual(scheduler.sigmas.count, 21)
        XCTAssertEqual(scheduler.sigmas.last, 0)
        let s0 = scheduler.sigmas[0]
        XCTAssertEqual(scheduler.initNoiseSigma, (s0 * s0 + 1).squareRoot(), accuracy: 1e-12)
    }

    func testEulerNeverAsksForNoise() throws {
        let scheduler = try EulerDiscreteScheduler(config: Fixtures.sdSchedulerConfig(), steps: 4)
        let x = Tensor(repeating: 1, shape: [4])
        _ = try scheduler.step(modelOutput: x, stepIndex: 0, sample: x, noise: {
            XCTFail("Euler with s_churn = 0 must not draw noise")
            return x
        })
    }

    func testUnsupportedSettingsAreNamed() {
        var config = Fixtures.sdSchedulerConfig()
        config.useKarrasSigmas = true
        XCTAssertThrowsError(try EulerDiscreteScheduler(config: config, steps: 4)) { error in
            XCTAssertEqual(error as? SchedulerError,
                           .unsupported(scheduler: "euler", setting: "use_karras_sigmas", value: "true"))
        }
        var config2 = Fixtures.sdSchedulerConfig()
        config2.timestepSpacing = "karras"
        XCTAssertThrowsError(try DDIMScheduler(config: config2, steps: 4))
        XCTAssertThrowsError(try EulerDiscreteScheduler(config: Fixtures.sdSchedulerConfig(), steps: 0))
        XCTAssertThrowsError(try LCMScheduler(config: Fixtures.sdSchedulerConfig(), steps: 51))
    }

    func testDecodesDiffusersSchedulerJSON() throws {
        let json = """
        {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.42.1", "beta_end": 0.012,
         "beta_schedule": "scaled_linear", "beta_start": 0.00085, "final_sigmas_type": "zero",
         "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
         "rescale_betas_zero_snr": false, "sigma_max": null, "sigma_min": null, "steps_offset": 1,
         "timestep_spacing": "leading", "timestep_type": "discrete", "trained_betas": null,
         "use_beta_sigmas": false, "use_exponential_sigmas": false, "use_karras_sigmas": false}
        """
        let config = try JSONDecoder().decode(SchedulerConfig.self, from: Data(json.utf8))
        XCTAssertEqual(config.className, "EulerDiscreteScheduler")
        XCTAssertEqual(config.numTrainTimesteps, 1000)
        XCTAssertEqual(config.betaStart ?? 0, 0.00085, accuracy: 1e-15)
        XCTAssertEqual(config.betaEnd ?? 0, 0.012, accuracy: 1e-15)
        XCTAssertEqual(config.betaSchedule, "scaled_linear")
        XCTAssertEqual(config.stepsOffset, 1)
        XCTAssertEqual(config.timestepSpacing, "leading")
        XCTAssertEqual(config.useKarrasSigmas, false)
        XCTAssertNil(config.trainedBetas)
        XCTAssertNil(config.clipSample)
        let scheduler = try EulerDiscreteScheduler(config: config, steps: 20)
        XCTAssertEqual(scheduler.timesteps, try EulerDiscreteScheduler(config: Fixtures.sdSchedulerConfig(), steps: 20).timesteps)
    }

    func testGuidanceScaleEmbeddingMatchesDiffusers() throws {
        let goldens = try Fixtures.decode(GuidanceEmbeddingGoldens.self, from: "guidance_embedding_goldens.json")
        for c in goldens.cases {
            let got = guidanceScaleEmbedding(guidanceScale: c.guidanceScale, dimension: c.embeddingDim)
            // Products are formed in float32 as torch forms them; torch's float32 exp can be 1 ulp off, which
            // moves an argument of ~7000 rad by ~5e-4.
            assertClose(got, c.embedding, rtol: 0, atol: 1e-3, "embedding w=\(c.guidanceScale) dim=\(c.embeddingDim)")
        }
    }
}

private struct NoiseGoldens: Decodable {
    struct Case: Decodable {
        let seed: UInt64
        let shape: [Int]
        let count: Int
        let head: [Double]
        let tail: [Double]
        let sum: Double
        let secondDrawHead: [Double]

        enum CodingKeys: String, CodingKey {
            case seed, shape, count, head, tail, sum
            case secondDrawHead = "second_draw_head"
        }
    }

    let cases: [Case]
}

final class RandomTests: XCTestCase {
    func testMatchesTorchRandn() throws {
        let goldens = try Fixtures.decode(NoiseGoldens.self, from: "noise_goldens.json")
        for c in goldens.cases {
            var rng = TorchRandom(seed: c.seed)
            let first = rng.normalTensor(shape: c.shape)
            XCTAssertEqual(first.count, c.count)
            let label = "seed \(c.seed) shape \(c.shape)"
            assertClose(Array(first.scalars.prefix(c.head.count)), c.head, rtol: 1e-5, atol: 1e-6, "\(label) head")
            if !c.tail.isEmpty {
                assertClose(Array(first.scalars.suffix(c.tail.count)), c.tail, rtol: 1e-5, atol: 1e-6, "\(label) tail")
            }
            let sum = first.scalars.reduce(0.0) { $0 + Double($1) }
            XCTAssertEqual(sum, c.sum, accuracy: 1e-3, label)
            let second = rng.normal(count: c.count)
            assertClose(Array(second.prefix(c.secondDrawHead.count)), c.secondDrawHead, rtol: 1e-5, atol: 1e-6,
                        "\(label) second draw")
        }
    }

    func testMersenneTwisterReferenceValue() {
        // The 10000th output of MT19937 seeded with 5489 is 4123659995 (C++11 [rand.predef]).
        var mt = MT19937(seed: 5489)
        var value: UInt32 = 0
        for _ in 0 ..< 10000 { value = mt.next() }
        XCTAssertEqual(value, 4_123_659_995)
    }
}
