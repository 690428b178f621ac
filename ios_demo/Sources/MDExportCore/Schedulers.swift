import Foundation

public enum SchedulerError: Error, Equatable, LocalizedError {
    case unreadable(file: String, reason: String)
    case unsupported(scheduler: String, setting: String, value: String)
    case unknownScheduler(String)
    case invalidSteps(requested: Int, reason: String)
    case shapeMismatch(String)

    public var errorDescription: String? {
        switch self {
        case let .unreadable(file, reason):
            return "Cannot read \(file): \(reason)"
        case let .unsupported(scheduler, setting, value):
            return "scheduler.json: \(setting) = \(value) is not supported by this app's \(scheduler) scheduler"
        case let .unknownScheduler(name):
            return "scheduler \"\(name)\" is not implemented in this app (it has: "
                + SchedulerKind.allCases.map(\.rawValue).joined(separator: ", ") + ")"
        case let .invalidSteps(requested, reason):
            return "\(requested) steps: \(reason)"
        case let .shapeMismatch(message):
            return message
        }
    }
}

/// The schedulers this app implements, named as in `pipeline.scheduler`.
public enum SchedulerKind: String, CaseIterable, Identifiable {
    case euler
    case ddim
    case dpmpp2m = "dpmpp-2m"
    case lcm

    public var id: String { rawValue }
}

/// What the model predicts (`prediction_type`).
public enum PredictionType: String {
    case epsilon
    case vPrediction = "v_prediction"
    case sample
}

/// `scheduler.json`: the checkpoint's diffusers scheduler config. Every key is optional; a missing key
/// takes the default of the diffusers class being built (as `SchedulerClass.from_config` would).
public struct SchedulerConfig: Codable, Equatable {
    public var className: String?
    public var numTrainTimesteps: Int?
    public var betaStart: Double?
    public var betaEnd: Double?
    public var betaSchedule: String?
    public var trainedBetas: [Double]?
    public var predictionType: String?
    public var stepsOffset: Int?
    public var timestepSpacing: String?
    public var finalSigmasType: String?
    public var interpolationType: String?
    public var useKarrasSigmas: Bool?
    public var useExponentialSigmas: Bool?
    public var useBetaSigmas: Bool?
    public var timestepType: String?
    public var rescaleBetasZeroSnr: Bool?
    public var clipSample: Bool?
    public var clipSampleRange: Double?
    public var setAlphaToOne: Bool?
    public var thresholding: Bool?
    public var originalInferenceSteps: Int?
    public var timestepScaling: Double?
    // DPMSolverMultistepScheduler
    public var algorithmType: String?
    public var solverOrder: Int?
    public var solverType: String?
    public var lowerOrderFinal: Bool?
    public var eulerAtFinal: Bool?
    public var lambdaMinClipped: Double?
    public var varianceType: String?
    public var useLuLambdas: Bool?
    public var useFlowSigmas: Bool?

    enum CodingKeys: String, CodingKey {
        case className = "_class_name"
        case numTrainTimesteps = "num_train_timesteps"
        case betaStart = "beta_start"
        case betaEnd = "beta_end"
        case betaSchedule = "beta_schedule"
        case trainedBetas = "trained_betas"
        case predictionType = "prediction_type"
        case stepsOffset = "steps_offset"
        case timestepSpacing = "timestep_spacing"
        case finalSigmasType = "final_sigmas_type"
        case interpolationType = "interpolation_type"
        case useKarrasSigmas = "use_karras_sigmas"
        case useExponentialSigmas = "use_exponential_sigmas"
        case useBetaSigmas = "use_beta_sigmas"
        case timestepType = "timestep_type"
        case rescaleBetasZeroSnr = "rescale_betas_zero_snr"
        case clipSample = "clip_sample"
        case clipSampleRange = "clip_sample_range"
        case setAlphaToOne = "set_alpha_to_one"
        case thresholding
        case originalInferenceSteps = "original_inference_steps"
        case timestepScaling = "timestep_scaling"
        case algorithmType = "algorithm_type"
        case solverOrder = "solver_order"
        case solverType = "solver_type"
        case lowerOrderFinal = "lower_order_final"
        case eulerAtFinal = "euler_at_final"
        case lambdaMinClipped = "lambda_min_clipped"
        case varianceType = "variance_type"
        case useLuLambdas = "use_lu_lambdas"
        case useFlowSigmas = "use_flow_sigmas"
    }

    /// The config the denoising loop builds its scheduler from. diffusers' StableDiffusionPipeline
    /// rewrites an "outdated" scheduler config before using it (`steps_offset` = 1, `clip_sample` =
    /// false), and md_export's own loop does the same for guidance `cfg-batch2` and `none`; the LCM
    /// pipeline (guidance `embedded`) uses the config as it is. With this, DDIM built from an Euler
    /// `scheduler.json` gives diffusers' DDIM image.
    public func rewritten(for guidance: GuidanceMode) -> SchedulerConfig {
        guard guidance != .embedded else { return self }
        var config = self
        config.stepsOffset = 1
        config.clipSample = false
        return config
    }

    public init() {}

    public static func load(from url: URL) throws -> SchedulerConfig {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw SchedulerError.unreadable(file: url.lastPathComponent, reason: error.localizedDescription)
        }
        do {
            return try JSONDecoder().decode(SchedulerConfig.self, from: data)
        } catch let error as DecodingError {
            throw SchedulerError.unreadable(file: url.lastPathComponent, reason: Manifest.describe(error))
        }
    }
}

/// One scheduler step's result.
public struct SchedulerOutput {
    public var prevSample: Tensor
    /// The model's estimate of the clean sample (LCM: the boundary-condition "denoised" value).
    public var predictedOriginal: Tensor
}

/// A diffusion sampler over a fixed list of timesteps.
public protocol DiffusionScheduler {
    var kind: SchedulerKind { get }
    /// The timesteps to feed the UNet, in order.
    var timesteps: [Double] { get }
    /// Standard deviation of the initial noise.
    var initNoiseSigma: Double { get }
    /// The UNet's `sample` input for step `stepIndex`.
    func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor
    /// One step back in time. `noise` is asked for fresh N(0, 1) noise of the sample's shape by
    /// samplers that inject noise (LCM between steps); Euler (s_churn = 0) and DDIM (eta = 0) never call it.
    func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: () -> Tensor) throws -> SchedulerOutput
}

/// Builds the scheduler `kind` from `config` for `steps` inference steps.
public func makeScheduler(kind: SchedulerKind, config: SchedulerConfig, steps: Int) throws -> DiffusionScheduler {
    switch kind {
    case .euler: return try EulerDiscreteScheduler(config: config, steps: steps)
    case .ddim: return try DDIMScheduler(config: config, steps: steps)
    case .dpmpp2m: return try DPMSolverMultistepScheduler(config: config, steps: steps)
    case .lcm: return try LCMScheduler(config: config, steps: steps)
    }
}

// MARK: - Shared schedule arithmetic

enum ScheduleMath {
    /// numpy.linspace(start, stop, num) (endpoint included): start + i * step, last value exactly stop.
    static func linspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
        guard num > 1 else { return num == 1 ? [start] : [] }
        let step = (stop - start) / Double(num - 1)
        var out = (0 ..< num).map { start + Double($0) * step }
        out[num - 1] = stop
        return out
    }

    struct BetaSettings {
        var trainSteps: Int
        var betaStart: Double
        var betaEnd: Double
        var schedule: String
    }

    /// cumprod(1 - betas) for the config's beta schedule (computed in Double; diffusers uses float32,
    /// so values agree to about 1e-6 relative).
    static func alphasCumprod(config: SchedulerConfig, defaults: BetaSettings, scheduler: String) throws -> [Double] {
        if config.rescaleBetasZeroSnr == true {
            throw SchedulerError.unsupported(scheduler: scheduler, setting: "rescale_betas_zero_snr", value: "true")
        }
        let n = config.numTrainTimesteps ?? defaults.trainSteps
        let betas: [Double]
        if let trained = config.trainedBetas, !trained.isEmpty {
            betas = trained
        } else {
            let start = config.betaStart ?? defaults.betaStart
            let end = config.betaEnd ?? defaults.betaEnd
            let schedule = config.betaSchedule ?? defaults.schedule
            switch schedule {
            case "linear":
                betas = linspace(start, end, n)
            case "scaled_linear":
                betas = linspace(start.squareRoot(), end.squareRoot(), n).map { $0 * $0 }
            case "squaredcos_cap_v2":
                // diffusers' betas_for_alpha_bar with the cosine alpha_bar.
                func alphaBar(_ t: Double) -> Double {
                    let c = cos((t + 0.008) / 1.008 * Double.pi / 2)
                    return c * c
                }
                betas = (0 ..< n).map { i in
                    let t1 = Double(i) / Double(n)
                    let t2 = Double(i + 1) / Double(n)
                    return min(1 - alphaBar(t2) / alphaBar(t1), 0.999)
                }
            default:
                throw SchedulerError.unsupported(scheduler: scheduler, setting: "beta_schedule", value: schedule)
            }
        }
        var out: [Double] = []
        out.reserveCapacity(betas.count)
        var product = 1.0
        for beta in betas {
            product *= 1 - beta
            out.append(product)
        }
        return out
    }

    /// diffusers' timestep spacings ("Common Diffusion Noise Schedules and Sample Steps are Flawed",
    /// table 2). `integral` rounds linspace values (DDIM); Euler keeps them fractional. Rounding is
    /// half to even, as numpy's.
    static func spacedTimesteps(spacing: String, trainSteps: Int, steps: Int, offset: Int, integral: Bool,
                                scheduler: String) throws -> [Double] {
        switch spacing {
        case "linspace":
            let values = Array(linspace(0, Double(trainSteps - 1), steps).reversed())
            return integral ? values.map { $0.rounded(.toNearestOrEven) } : values
        case "leading":
            let ratio = trainSteps / steps
            return (0 ..< steps).reversed().map { Double($0 * ratio + offset) }
        case "trailing":
            // numpy.arange(trainSteps, 0, -ratio).round() - 1
            let ratio = Double(trainSteps) / Double(steps)
            let count = Int((Double(-trainSteps) / -ratio).rounded(.up))
            return (0 ..< count).map { (Double(trainSteps) - Double($0) * ratio).rounded(.toNearestOrEven) - 1 }
        default:
            throw SchedulerError.unsupported(scheduler: scheduler, setting: "timestep_spacing", value: spacing)
        }
    }

    static func predictionType(_ config: SchedulerConfig, scheduler: String) throws -> PredictionType {
        let raw = config.predictionType ?? "epsilon"
        if raw == "original_sample" { return .sample }
        guard let type = PredictionType(rawValue: raw) else {
            throw SchedulerError.unsupported(scheduler: scheduler, setting: "prediction_type", value: raw)
        }
        return type
    }

    static func checkSteps(_ steps: Int, trainSteps: Int) throws {
        guard steps >= 1 else { throw SchedulerError.invalidSteps(requested: steps, reason: "need at least 1") }
        guard steps <= trainSteps else {
            throw SchedulerError.invalidSteps(requested: steps, reason: "more than num_train_timesteps (\(trainSteps))")
        }
    }

    static func checkSameShape(_ a: Tensor, _ b: Tensor) throws {
        guard a.shape == b.shape else {
            throw SchedulerError.shapeMismatch("scheduler step: model output \(a.shape) vs sample \(b.shape)")
        }
    }
}

// MARK: - Euler (EulerDiscreteScheduler)

/// diffusers' EulerDiscreteScheduler with s_churn = 0 (deterministic), linear sigma interpolation,
/// discrete timesteps, final sigma "zero" or "sigma_min".
public struct EulerDiscreteScheduler: DiffusionScheduler {
    public let kind = SchedulerKind.euler
    public let timesteps: [Double]
    /// steps + 1 values; the last is the final sigma.
    public let sigmas: [Double]
    public let initNoiseSigma: Double
    public let predictionType: PredictionType

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "euler"
        for (flag, key) in [(config.useKarrasSigmas, "use_karras_sigmas"),
                            (config.useExponentialSigmas, "use_exponential_sigmas"),
                            (config.useBetaSigmas, "use_beta_sigmas")] where flag == true {
            throw SchedulerError.unsupported(scheduler: name, setting: key, value: "true")
        }
        if let interpolation = config.interpolationType, interpolation != "linear" {
            throw SchedulerError.unsupported(scheduler: name, setting: "interpolation_type", value: interpolation)
        }
        if let type = config.timestepType, type != "discrete" {
            throw SchedulerError.unsupported(scheduler: name, setting: "timestep_type", value: type)
        }
        let trainSteps = config.numTrainTimesteps ?? 1000
        try ScheduleMath.checkSteps(steps, trainSteps: trainSteps)
        let alphasCumprod = try ScheduleMath.alphasCumprod(
            config: config,
            defaults: .init(trainSteps: 1000, betaStart: 0.0001, betaEnd: 0.02, schedule: "linear"),
            scheduler: name)
        let spacing = config.timestepSpacing ?? "linspace"
        let ts = try ScheduleMath.spacedTimesteps(spacing: spacing, trainSteps: trainSteps, steps: steps,
                                                  offset: config.stepsOffset ?? 0, integral: false, scheduler: name)
        let fullSigmas = alphasCumprod.map { ((1 - $0) / $0).squareRoot() }
        // numpy.interp(t, arange(len), fullSigmas)
        var sig = ts.map { t -> Double in
            if t <= 0 { return fullSigmas[0] }
            if t >= Double(fullSigmas.count - 1) { return fullSigmas[fullSigmas.count - 1] }
            let low = Int(t.rounded(.down))
            let fraction = t - Double(low)
            return fullSigmas[low] + (fullSigmas[low + 1] - fullSigmas[low]) * fraction
        }
        switch config.finalSigmasType ?? "zero" {
        case "zero": sig.append(0)
        case "sigma_min": sig.append(fullSigmas[0])
        case let other: throw SchedulerError.unsupported(scheduler: name, setting: "final_sigmas_type", value: other)
        }
        let maxSigma = sig.max() ?? 1
        timesteps = ts
        sigmas = sig
        initNoiseSigma = (spacing == "linspace" || spacing == "trailing") ? maxSigma : (maxSigma * maxSigma + 1).squareRoot()
        predictionType = try ScheduleMath.predictionType(config, scheduler: name)
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor {
        let sigma = sigmas[stepIndex]
        return sample.scaled(by: Float(1 / (sigma * sigma + 1).squareRoot()))
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: () -> Tensor) throws -> SchedulerOutput {
        try ScheduleMath.checkSameShape(modelOutput, sample)
        let sigma = sigmas[stepIndex]
        let dt = sigmas[stepIndex + 1] - sigma
        var prev = sample
        var original = sample
        for i in 0 ..< sample.count {
            let x = Double(sample.scalars[i])
            let m = Double(modelOutput.scalars[i])
            let x0: Double
            switch predictionType {
            case .epsilon: x0 = x - sigma * m
            case .vPrediction: x0 = m * (-sigma / (sigma * sigma + 1).squareRoot()) + x / (sigma * sigma + 1)
            case .sample: x0 = m
            }
            let derivative = (x - x0) / sigma
            prev.scalars[i] = Float(x + derivative * dt)
            original.scalars[i] = Float(x0)
        }
        return SchedulerOutput(prevSample: prev, predictedOriginal: original)
    }
}

// MARK: - DDIM (DDIMScheduler)

/// diffusers' DDIMScheduler with eta = 0. Like diffusers, the previous timestep is always
/// `t - num_train_timesteps / steps`, whatever the spacing.
public struct DDIMScheduler: DiffusionScheduler {
    public let kind = SchedulerKind.ddim
    public let timesteps: [Double]
    public let initNoiseSigma = 1.0
    public let predictionType: PredictionType
    let alphasCumprod: [Double]
    let finalAlphaCumprod: Double
    let stepRatio: Int
    let clipRange: Double?

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "ddim"
        if config.thresholding == true {
            throw SchedulerError.unsupported(scheduler: name, setting: "thresholding", value: "true")
        }
        let trainSteps = config.numTrainTimesteps ?? 1000
        try ScheduleMath.checkSteps(steps, trainSteps: trainSteps)
        let cumprod = try ScheduleMath.alphasCumprod(
            config: config,
            defaults: .init(trainSteps: 1000, betaStart: 0.0001, betaEnd: 0.02, schedule: "linear"),
            scheduler: name)
        let ts = try ScheduleMath.spacedTimesteps(spacing: config.timestepSpacing ?? "leading", trainSteps: trainSteps,
                                                  steps: steps, offset: config.stepsOffset ?? 0, integral: true,
                                                  scheduler: name)
        for t in ts where Int(t) < 0 || Int(t) >= cumprod.count {
            throw SchedulerError.unsupported(scheduler: name, setting: "steps_offset",
                                             value: "gives timestep \(Int(t)), outside 0..<\(cumprod.count)")
        }
        alphasCumprod = cumprod
        finalAlphaCumprod = (config.setAlphaToOne ?? true) ? 1.0 : cumprod[0]
        timesteps = ts
        stepRatio = trainSteps / steps
        clipRange = (config.clipSample ?? true) ? (config.clipSampleRange ?? 1.0) : nil
        predictionType = try ScheduleMath.predictionType(config, scheduler: name)
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: () -> Tensor) throws -> SchedulerOutput {
        try ScheduleMath.checkSameShape(modelOutput, sample)
        let t = Int(timesteps[stepIndex])
        let prevT = t - stepRatio
        let alphaT = alphasCumprod[t]
        let alphaPrev = prevT >= 0 ? alphasCumprod[prevT] : finalAlphaCumprod
        let betaT = 1 - alphaT
        let sqrtAlphaT = alphaT.squareRoot()
        let sqrtBetaT = betaT.squareRoot()
        var prev = sample
        var original = sample
        for i in 0 ..< sample.count {
            let x = Double(sample.scalars[i])
            let m = Double(modelOutput.scalars[i])
            var x0: Double
            let eps: Double
            switch predictionType {
            case .epsilon:
                x0 = (x - sqrtBetaT * m) / sqrtAlphaT
                eps = m
            case .vPrediction:
                x0 = sqrtAlphaT * x - sqrtBetaT * m
                eps = sqrtAlphaT * m + sqrtBetaT * x
            case .sample:
                x0 = m
                eps = (x - sqrtAlphaT * m) / sqrtBetaT
            }
            if let r = clipRange { x0 = min(max(x0, -r), r) }
            prev.scalars[i] = Float(alphaPrev.squareRoot() * x0 + (1 - alphaPrev).squareRoot() * eps)
            original.scalars[i] = Float(x0)
        }
        return SchedulerOutput(prevSample: prev, predictedOriginal: original)
    }
}

// MARK: - DPM-Solver++ 2M (DPMSolverMultistepScheduler)

/// diffusers' DPMSolverMultistepScheduler as DPM-Solver++ 2M (algorithm_type "dpmsolver++",
/// solver_order 2; the name fixes both): solver_type midpoint or heun, lower_order_final,
/// euler_at_final, final_sigmas_type zero / sigma_min, lambda_min_clipped; epsilon / v_prediction /
/// sample. Deterministic. It remembers the previous step's data prediction, so it is a class and one
/// instance runs one generation with the steps in order. Karras / exponential / beta / Lu sigmas are
/// refused, as Euler refuses them.
public final class DPMSolverMultistepScheduler: DiffusionScheduler {
    public let kind = SchedulerKind.dpmpp2m
    public let timesteps: [Double]
    /// steps + 1 values; the last is the final sigma.
    public let sigmas: [Double]
    public let initNoiseSigma = 1.0
    public let predictionType: PredictionType
    let heun: Bool
    let lowerOrderFinal: Bool
    let eulerAtFinal: Bool
    let finalSigmaIsZero: Bool
    private var previousOriginal: [Double]?
    private var lowerOrderCount = 0
    private var nextStep = 0

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "dpmpp-2m"
        for (flag, key) in [(config.useKarrasSigmas, "use_karras_sigmas"),
                            (config.useExponentialSigmas, "use_exponential_sigmas"),
                            (config.useBetaSigmas, "use_beta_sigmas"),
                            (config.useLuLambdas, "use_lu_lambdas"),
                            (config.useFlowSigmas, "use_flow_sigmas"),
                            (config.thresholding, "thresholding")] where flag == true {
            throw SchedulerError.unsupported(scheduler: name, setting: key, value: "true")
        }
        if let variance = config.varianceType, variance == "learned" || variance == "learned_range" {
            throw SchedulerError.unsupported(scheduler: name, setting: "variance_type", value: variance)
        }
        switch config.solverType ?? "midpoint" {
        case "midpoint": heun = false
        case "heun": heun = true
        case let other: throw SchedulerError.unsupported(scheduler: name, setting: "solver_type", value: other)
        }
        let trainSteps = config.numTrainTimesteps ?? 1000
        try ScheduleMath.checkSteps(steps, trainSteps: trainSteps)
        let alphasCumprod = try ScheduleMath.alphasCumprod(
            config: config,
            defaults: .init(trainSteps: 1000, betaStart: 0.0001, betaEnd: 0.02, schedule: "linear"),
            scheduler: name)
        // lambda_min_clipped drops the training timesteps whose log-SNR is below it
        var clipped = 0
        if let lambdaMin = config.lambdaMinClipped, lambdaMin.isFinite {
            clipped = alphasCumprod.filter { a in
                log(a.squareRoot()) - log((1 - a).squareRoot()) < lambdaMin
            }.count
        }
        let last = trainSteps - clipped
        let ts: [Double]
        switch config.timestepSpacing ?? "linspace" {
        case "linspace":
            // numpy.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
            ts = Array(ScheduleMath.linspace(0, Double(last - 1), steps + 1)
                .map { $0.rounded(.toNearestOrEven) }.reversed().dropLast())
        case "leading":
            let ratio = last / (steps + 1)
            ts = (1 ... steps).reversed().map { Double($0 * ratio + (config.stepsOffset ?? 0)) }
        case "trailing":
            // numpy.arange(last, 0, -num_train_timesteps / steps).round() - 1
            let ratio = Double(trainSteps) / Double(steps)
            let count = Int((Double(last) / ratio).rounded(.up))
            ts = (0 ..< count).map { (Double(last) - Double($0) * ratio).rounded(.toNearestOrEven) - 1 }
        case let other:
            throw SchedulerError.unsupported(scheduler: name, setting: "timestep_spacing", value: other)
        }
        let fullSigmas = alphasCumprod.map { ((1 - $0) / $0).squareRoot() }
        var sig = ts.map { t -> Double in
            if t <= 0 { return fullSigmas[0] }
            if t >= Double(fullSigmas.count - 1) { return fullSigmas[fullSigmas.count - 1] }
            let low = Int(t.rounded(.down))
            return fullSigmas[low] + (fullSigmas[low + 1] - fullSigmas[low]) * (t - Double(low))
        }
        switch config.finalSigmasType ?? "zero" {
        case "zero": sig.append(0)
        case "sigma_min": sig.append(fullSigmas[0])
        case let other: throw SchedulerError.unsupported(scheduler: name, setting: "final_sigmas_type", value: other)
        }
        finalSigmaIsZero = (config.finalSigmasType ?? "zero") == "zero"
        timesteps = ts
        sigmas = sig
        lowerOrderFinal = config.lowerOrderFinal ?? true
        eulerAtFinal = config.eulerAtFinal ?? false
        predictionType = try ScheduleMath.predictionType(config, scheduler: name)
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    /// alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t.
    private static func alphaSigma(_ sigma: Double) -> (Double, Double) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: () -> Tensor) throws -> SchedulerOutput {
        try ScheduleMath.checkSameShape(modelOutput, sample)
        guard stepIndex == nextStep else {
            throw SchedulerError.invalidSteps(requested: stepIndex,
                                              reason: "dpmpp-2m runs its steps in order; expected step \(nextStep)")
        }
        nextStep += 1
        let count = timesteps.count
        let lowerFinal = stepIndex == count - 1
            && (eulerAtFinal || (lowerOrderFinal && count < 15) || finalSigmaIsZero)
        let (alphaS0, sigmaS0) = Self.alphaSigma(sigmas[stepIndex])
        let (alphaT, sigmaT) = Self.alphaSigma(sigmas[stepIndex + 1])
        let lambdaT = log(alphaT) - log(sigmaT)  // +infinity when the final sigma is 0
        let lambdaS0 = log(alphaS0) - log(sigmaS0)
        let h = lambdaT - lambdaS0
        let expm = exp(-h) - 1
        let ratio = sigmaT / sigmaS0
        var original = [Double](repeating: 0, count: sample.count)
        for i in 0 ..< sample.count {
            let x = Double(sample.scalars[i])
            let m = Double(modelOutput.scalars[i])
            let x0: Double
            switch predictionType {
            case .epsilon: x0 = (x - sigmaS0 * m) / alphaS0
            case .vPrediction: x0 = alphaS0 * x - sigmaS0 * m
            case .sample: x0 = m
            }
            original[i] = Double(Float(x0))  // diffusers keeps the data prediction in float32
        }
        var prev = sample
        if lowerOrderCount < 1 || lowerFinal || previousOriginal == nil {
            for i in 0 ..< sample.count {
                prev.scalars[i] = Float(ratio * Double(sample.scalars[i]) - alphaT * expm * original[i])
            }
        } else {
            let earlier = previousOriginal!
            let (alphaS1, sigmaS1) = Self.alphaSigma(sigmas[stepIndex - 1])
            let lambdaS1 = log(alphaS1) - log(sigmaS1)
            let r0 = (lambdaS0 - lambdaS1) / h
            for i in 0 ..< sample.count {
                let d1 = (original[i] - earlier[i]) / r0
                let x = Double(sample.scalars[i])
                let value = heun
                    ? ratio * x - alphaT * expm * original[i] + alphaT * (expm / h + 1) * d1
                    : ratio * x - alphaT * expm * original[i] - 0.5 * alphaT * expm * d1
                prev.scalars[i] = Float(value)
            }
        }
        previousOriginal = original
        if lowerOrderCount < 2 { lowerOrderCount += 1 }
        var predicted = sample
        for i in 0 ..< sample.count { predicted.scalars[i] = Float(original[i]) }
        return SchedulerOutput(prevSample: prev, predictedOriginal: predicted)
    }
}

// MARK: - LCM (LCMScheduler)

/// diffusers' LCMScheduler (text-to-image, strength 1). Between steps it injects fresh noise from
/// `noise`; the last step returns the denoised sample.
public struct LCMScheduler: DiffusionScheduler {
    public let kind = SchedulerKind.lcm
    public let timesteps: [Double]
    public let initNoiseSigma = 1.0
    public let predictionType: PredictionType
    let alphasCumprod: [Double]
    let timestepScaling: Double
    let clipRange: Double?

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "lcm"
        if config.thresholding == true {
            throw SchedulerError.unsupported(scheduler: name, setting: "thresholding", value: "true")
        }
        let trainSteps = config.numTrainTimesteps ?? 1000
        let originalSteps = config.originalInferenceSteps ?? 50
        try ScheduleMath.checkSteps(steps, trainSteps: trainSteps)
        guard originalSteps >= 1, originalSteps <= trainSteps else {
            throw SchedulerError.unsupported(scheduler: name, setting: "original_inference_steps", value: "\(originalSteps)")
        }
        guard steps <= originalSteps else {
            throw SchedulerError.invalidSteps(requested: steps,
                                              reason: "LCM allows at most original_inference_steps (\(originalSteps))")
        }
        alphasCumprod = try ScheduleMath.alphasCumprod(
            config: config,
            defaults: .init(trainSteps: 1000, betaStart: 0.00085, betaEnd: 0.012, schedule: "scaled_linear"),
            scheduler: name)
        let k = trainSteps / originalSteps
        let origin: [Double] = Array((1 ... originalSteps).map { Double($0 * k - 1) }.reversed())
        // numpy.linspace(0, len, steps, endpoint=False) floored: i * (len / steps)
        let spacing = Double(origin.count) / Double(steps)
        timesteps = (0 ..< steps).map { origin[Int((Double($0) * spacing).rounded(.down))] }
        timestepScaling = config.timestepScaling ?? 10.0
        clipRange = (config.clipSample ?? false) ? (config.clipSampleRange ?? 1.0) : nil
        predictionType = try ScheduleMath.predictionType(config, scheduler: name)
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: () -> Tensor) throws -> SchedulerOutput {
        try ScheduleMath.checkSameShape(modelOutput, sample)
        let t = Int(timesteps[stepIndex])
        let isLast = stepIndex == timesteps.count - 1
        let prevT = isLast ? t : Int(timesteps[stepIndex + 1])
        let alphaT = alphasCumprod[t]
        let alphaPrev = alphasCumprod[prevT]
        let sqrtAlphaT = alphaT.squareRoot()
        let sqrtBetaT = (1 - alphaT).squareRoot()
        let scaled = Double(t) * timestepScaling
        let sigmaData2 = 0.25  // sigma_data = 0.5
        let cSkip = sigmaData2 / (scaled * scaled + sigmaData2)
        let cOut = scaled / (scaled * scaled + sigmaData2).squareRoot()
        var denoised = sample
        for i in 0 ..< sample.count {
            let x = Double(sample.scalars[i])
            let m = Double(modelOutput.scalars[i])
            var x0: Double
            switch predictionType {
            case .epsilon: x0 = (x - sqrtBetaT * m) / sqrtAlphaT
            case .vPrediction: x0 = sqrtAlphaT * x - sqrtBetaT * m
            case .sample: x0 = m
            }
            if let r = clipRange { x0 = min(max(x0, -r), r) }
            denoised.scalars[i] = Float(cOut * x0 + cSkip * x)
        }
        if isLast {
            return SchedulerOutput(prevSample: denoised, predictedOriginal: denoised)
        }
        let z = noise()
        try ScheduleMath.checkSameShape(z, sample)
        let a = Float(alphaPrev.squareRoot())
        let b = Float((1 - alphaPrev).squareRoot())
        var prev = denoised
        for i in 0 ..< prev.count {
            prev.scalars[i] = a * denoised.scalars[i] + b * z.scalars[i]
        }
        return SchedulerOutput(prevSample: prev, predictedOriginal: denoised)
    }
}

/// LCM's guidance-scale embedding (`timestep_cond`): diffusers' get_guidance_scale_embedding(w - 1),
/// sin half then cos half, zero-padded when `dimension` is odd. The products are formed in float32 as
/// torch forms them (the arguments reach thousands of radians, so Double products would differ from
/// diffusers by up to ~1e-3); sin, cos and exp are evaluated in Double and rounded.
public func guidanceScaleEmbedding(guidanceScale: Double, dimension: Int) -> [Float] {
    guard dimension > 0 else { return [] }
    let w = Float(guidanceScale - 1) * Float(1000)
    let half = dimension / 2
    guard half > 0 else { return [Float](repeating: 0, count: dimension) }
    let exponent: Float = half > 1 ? Float(log(10000.0)) / Float(half - 1) : 0
    let frequencies: [Float] = (0 ..< half).map { Float(exp(Double(Float($0) * -exponent))) }
    let arguments: [Double] = frequencies.map { Double(w * $0) }
    var out = arguments.map { Float(sin($0)) } + arguments.map { Float(cos($0)) }
    if dimension % 2 == 1 { out.append(0) }
    return out
}
