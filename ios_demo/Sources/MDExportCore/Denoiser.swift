import Foundation

/// A model that maps named tensors to named tensors (a Core ML model in the app, a fake in tests).
/// Names are md-export's (docs/bundle-format.md): `input_ids`, `last_hidden_state`, `sample`, `timestep`,
/// `encoder_hidden_states`, `timestep_cond`, `noise_pred`, `latent`, `image`.
public protocol DiffusionModel {
    func run(_ inputs: [String: Tensor]) throws -> [String: Tensor]
}

/// md-export's input and output names.
public enum IOName {
    public static let inputIds = "input_ids"
    public static let lastHiddenState = "last_hidden_state"
    public static let sample = "sample"
    public static let timestep = "timestep"
    public static let encoderHiddenStates = "encoder_hidden_states"
    public static let timestepCond = "timestep_cond"
    public static let noisePred = "noise_pred"
    public static let latent = "latent"
    public static let image = "image"
}

public enum DenoiserError: Error, Equatable, LocalizedError {
    case missingOutput(model: String, name: String, got: [String])
    case unexpectedShape(model: String, name: String, expected: [Int], got: [Int])
    case cancelled

    public var errorDescription: String? {
        switch self {
        case let .missingOutput(model, name, got):
            return "\(model) returned no \"\(name)\" (it returned: \(got.sorted().joined(separator: ", ")))"
        case let .unexpectedShape(model, name, expected, got):
            return "\(model) output \"\(name)\" has shape \(got); the manifest expects \(expected)"
        case .cancelled:
            return "Cancelled"
        }
    }
}

/// What to generate.
public struct GenerationParameters: Equatable {
    public var prompt: String
    /// Row 0 of the batch-2 guidance; "" is the plain unconditional prompt.
    public var negativePrompt: String
    public var steps: Int
    public var seed: UInt64
    public var guidanceScale: Double
    public var scheduler: SchedulerKind

    public init(prompt: String, negativePrompt: String = "", steps: Int, seed: UInt64, guidanceScale: Double,
                scheduler: SchedulerKind) {
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.steps = steps
        self.seed = seed
        self.guidanceScale = guidanceScale
        self.scheduler = scheduler
    }
}

/// Reported after each UNet step.
public struct GenerationProgress: Equatable {
    /// Steps finished so far (1 ... totalSteps).
    public var step: Int
    public var totalSteps: Int
    public var timestep: Double

    public init(step: Int, totalSteps: Int, timestep: Double) {
        self.step = step
        self.totalSteps = totalSteps
        self.timestep = timestep
    }
}

/// The text-to-image loop: tokenize, encode, denoise with the scheduler and guidance the manifest
/// names, decode. It knows nothing about Core ML; models are `DiffusionModel`s.
///
/// Guidance (`pipeline.guidance`):
/// - `cfg-batch2`: the UNet runs on batch 2, row 0 unconditional (negative prompt, "" by default) and
///   row 1 the prompt, both rows with the same latent and timestep; noise = u + s * (c - u).
/// - `none`: batch 1, the prompt only.
/// - `embedded` (LCM): batch 1, plus `timestep_cond` = guidance-scale embedding of (s - 1).
///
/// Scheduler: built from `schedulerConfig.rewritten(for: guidance)`, the config rewrite diffusers'
/// StableDiffusionPipeline applies (steps_offset 1, clip_sample false; not for `embedded`).
///
/// Initial noise comes from `TorchRandom(seed:)` (PyTorch's CPU generator), so the same seed gives the
/// same starting latent as diffusers with `torch.Generator().manual_seed(seed)`; LCM's step noise is drawn
/// from the same generator afterwards, one tensor per step, as diffusers draws it.
///
/// Decoding: when `pipeline.decoder_applies_scaling` is true the decoder gets the latent as the
/// scheduler left it; otherwise the loop passes `latent / vae_scaling_factor + vae_shift_factor`.
public final class Denoiser {
    public let manifest: Manifest
    public let tokenizer: ClipTokenizer
    public let schedulerConfig: SchedulerConfig
    let textEncoder: DiffusionModel
    let unet: DiffusionModel
    let decoder: DiffusionModel

    public init(manifest: Manifest, tokenizer: ClipTokenizer, schedulerConfig: SchedulerConfig,
                textEncoder: DiffusionModel, unet: DiffusionModel, decoder: DiffusionModel) {
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.schedulerConfig = schedulerConfig
        self.textEncoder = textEncoder
        self.unet = unet
        self.decoder = decoder
    }

    /// The scheduler named by the manifest when this app implements it, else nil.
    public var manifestScheduler: SchedulerKind? { SchedulerKind(rawValue: manifest.pipeline.scheduler) }

    /// Token ids of `prompt` as the text encoder's `input_ids` tensor, [1, text_max_length].
    public func inputIds(_ prompt: String) -> Tensor {
        let ids = tokenizer.encode(prompt).map { Float($0) }
        return try! Tensor(shape: [1, ids.count], scalars: ids)
    }

    /// `last_hidden_state` for `prompt`, [1, text_max_length, text_hidden_size].
    public func encodeText(_ prompt: String) throws -> Tensor {
        let p = manifest.pipeline
        let outputs = try textEncoder.run([IOName.inputIds: inputIds(prompt)])
        let hidden = try Denoiser.output(outputs, IOName.lastHiddenState, model: "text_encoder")
        try Denoiser.expect(hidden, [1, p.textMaxLength, p.textHiddenSize], IOName.lastHiddenState, model: "text_encoder")
        return hidden
    }

    /// u + s * (c - u), element-wise.
    public static func combineGuidance(unconditional u: Tensor, conditional c: Tensor, scale: Double) throws -> Tensor {
        let s = Float(scale)
        return try u.zipWith(c) { uv, cv in uv + s * (cv - uv) }
    }

    /// Runs the whole pipeline and returns the decoder's `image`, [1, 3, H, W] in about [-1, 1].
    /// `progress` is called after every step; return false from it to cancel (throws `.cancelled`).
    public func generate(_ parameters: GenerationParameters,
                         progress: (GenerationProgress) -> Bool = { _ in true }) throws -> Tensor {
        let latents = try denoise(parameters, progress: progress)
        return try decode(latents)
    }

    /// The denoising loop alone; returns the final latent, [1, C, h, w], as the scheduler produced it.
    public func denoise(_ parameters: GenerationParameters,
                        progress: (GenerationProgress) -> Bool = { _ in true }) throws -> Tensor {
        let p = manifest.pipeline
        let mode = try p.guidanceMode()
        let batch = mode == .cfgBatch2 ? 2 : 1
        // diffusers' pipeline config rewrite (steps_offset 1, clip_sample false; none for LCM's embedded guidance)
        let scheduler = try makeScheduler(kind: parameters.scheduler, config: schedulerConfig.rewritten(for: mode),
                                          steps: parameters.steps)
        let latentShape = p.latentShape
        let noiseShape = [batch] + Array(latentShape.dropFirst())

        let conditional = try encodeText(parameters.prompt)
        let hiddenStates: Tensor
        if mode == .cfgBatch2 {
            let unconditional = try encodeText(parameters.negativePrompt)
            hiddenStates = try Tensor.concatenateBatch([unconditional, conditional])
        } else {
            hiddenStates = conditional
        }

        let timestepCond: Tensor?
        if mode == .embedded {
            let spec = try manifest.model("unet").input(named: IOName.timestepCond)
            let dimension = spec?.shape.last ?? 0
            let embedding = guidanceScaleEmbedding(guidanceScale: parameters.guidanceScale, dimension: dimension)
            timestepCond = try Tensor(shape: [batch, dimension],
                                      scalars: Array((0 ..< batch).map { _ in embedding }.joined()))
        } else {
            timestepCond = nil
        }

        var rng = TorchRandom(seed: parameters.seed)
        var latents = rng.normalTensor(shape: latentShape).scaled(by: Float(scheduler.initNoiseSigma))

        let total = scheduler.timesteps.count
        for (index, t) in scheduler.timesteps.enumerated() {
            let scaled = scheduler.scaleModelInput(latents, stepIndex: index)
            let sampleInput = try (batch == 2 ? Tensor.concatenateBatch([scaled, scaled]) : scaled)
            var inputs: [String: Tensor] = [
                IOName.sample: sampleInput,
                IOName.timestep: Tensor(repeating: Float(t), shape: [batch]),
                IOName.encoderHiddenStates: hiddenStates,
            ]
            if let cond = timestepCond { inputs[IOName.timestepCond] = cond }
            let outputs = try unet.run(inputs)
            let noisePred = try Denoiser.output(outputs, IOName.noisePred, model: "unet")
            try Denoiser.expect(noisePred, noiseShape, IOName.noisePred, model: "unet")
            let guided: Tensor
            if batch == 2 {
                guided = try Denoiser.combineGuidance(unconditional: noisePred.batchRow(0),
                                                      conditional: noisePred.batchRow(1),
                                                      scale: parameters.guidanceScale)
            } else {
                guided = noisePred
            }
            latents = try scheduler.step(modelOutput: guided, stepIndex: index, sample: latents,
                                         noise: { rng.normalTensor(shape: latentShape) }).prevSample
            if !progress(GenerationProgress(step: index + 1, totalSteps: total, timestep: t)) {
                throw DenoiserError.cancelled
            }
        }
        return latents
    }

    /// Runs the decoder on a latent as the scheduler produced it.
    public func decode(_ latents: Tensor) throws -> Tensor {
        let p = manifest.pipeline
        try Denoiser.expect(latents, p.latentShape, IOName.latent, model: "scheduler")
        let decoderInput: Tensor
        if p.decoderAppliesScaling {
            decoderInput = latents
        } else {
            let inverse = Float(1 / p.vaeScalingFactor)
            let shift = Float(p.vaeShiftFactor ?? 0)
            decoderInput = latents.map { $0 * inverse + shift }
        }
        let outputs = try decoder.run([IOName.latent: decoderInput])
        let image = try Denoiser.output(outputs, IOName.image, model: "vae_decoder")
        try Denoiser.expect(image, [1, 3, p.imageHeight, p.imageWidth], IOName.image, model: "vae_decoder")
        return image
    }

    static func output(_ outputs: [String: Tensor], _ name: String, model: String) throws -> Tensor {
        guard let tensor = outputs[name] else {
            throw DenoiserError.missingOutput(model: model, name: name, got: Array(outputs.keys))
        }
        return tensor
    }

    static func expect(_ tensor: Tensor, _ shape: [Int], _ name: String, model: String) throws {
        guard tensor.shape == shape else {
            throw DenoiserError.unexpectedShape(model: model, name: name, expected: shape, got: tensor.shape)
        }
    }
}
