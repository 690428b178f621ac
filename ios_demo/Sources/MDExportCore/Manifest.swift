import Foundation

/// Errors found while reading or checking `manifest.json` (docs/bundle-format.md, schema_version 1).
public enum ManifestError: Error, Equatable, LocalizedError {
    case unreadable(file: String, reason: String)
    case invalidJSON(reason: String)
    case missingSchemaVersion
    case unsupportedSchemaVersion(found: Int, supported: Int)
    case invalidField(path: String, reason: String)
    case missingModel(name: String, known: [String])
    case missingTensor(model: String, name: String, direction: String)
    case noModelFile(model: String)
    case fileAndChunks(model: String)
    case chunkInputNotProduced(model: String, chunk: Int, file: String, name: String)
    case chunkOutputMissing(model: String, file: String, name: String)

    public var errorDescription: String? {
        switch self {
        case let .unreadable(file, reason):
            return "Cannot read \(file): \(reason)"
        case let .invalidJSON(reason):
            return "manifest.json is not a valid md-export manifest: \(reason)"
        case .missingSchemaVersion:
            return "manifest.json has no \"schema_version\"; is this an md-export bundle?"
        case let .unsupportedSchemaVersion(found, supported):
            return "manifest.json has schema_version \(found); this app reads schema_version \(supported). "
                + "Export the bundle again with a matching md-export, or update the app."
        case let .invalidField(path, reason):
            return "manifest.json: \(path): \(reason)"
        case let .missingModel(name, known):
            return "manifest.json has no model \"\(name)\" (it lists: \(known.sorted().joined(separator: ", ")))"
        case let .missingTensor(model, name, direction):
            return "manifest.json: model \"\(model)\" has no \(direction) named \"\(name)\""
        case let .noModelFile(model):
            return "manifest.json: model \"\(model)\" names no file (neither \"file\" nor \"chunks\"); export the bundle again"
        case let .fileAndChunks(model):
            return "manifest.json: model \"\(model)\" has both \"file\" and \"chunks\"; a chunked model has no \"file\". "
                + "Export the bundle again"
        case let .chunkInputNotProduced(model, chunk, file, name):
            return "manifest.json: model \"\(model)\" chunk \(chunk) (\(file)) takes \"\(name)\", which neither the model's "
                + "inputs nor an earlier chunk's outputs provide; export the bundle again"
        case let .chunkOutputMissing(model, file, name):
            return "manifest.json: model \"\(model)\": its last chunk (\(file)) does not output \"\(name)\"; export the bundle again"
        }
    }
}

/// Element types named in the manifest.
public enum DType: String, Codable, Equatable {
    case float32
    case float16
    case int32
    case int64
}

/// One model input or output: `{"name", "shape", "dtype", "layout"}`.
public struct TensorSpec: Codable, Equatable {
    public var name: String
    public var shape: [Int]
    public var dtype: DType
    public var layout: String?

    public init(name: String, shape: [Int], dtype: DType, layout: String? = nil) {
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.layout = layout
    }
}

/// One Core ML file to load and run: a whole model, or one chunk of a chunked model.
public struct ModelFileSpec: Codable, Equatable {
    public var file: String
    public var inputs: [TensorSpec]
    public var outputs: [TensorSpec]
    public var sha256: String?
    public var bytes: Int64?

    public init(file: String, inputs: [TensorSpec], outputs: [TensorSpec], sha256: String? = nil, bytes: Int64? = nil) {
        self.file = file
        self.inputs = inputs
        self.outputs = outputs
        self.sha256 = sha256
        self.bytes = bytes
    }
}

/// One entry of `models` (text_encoder, unet, vae_decoder, vae_encoder). It names either one `file` or,
/// for a model split for iOS (`md-export coreml --chunk-unet`), `chunks` in run order; `inputs` and
/// `outputs` are the model's either way, and `bytes` is the sum over the chunks.
public struct ModelSpec: Codable, Equatable {
    public var file: String?
    public var chunks: [ModelFileSpec]?
    public var format: String?
    public var signature: String?
    public var inputs: [TensorSpec]
    public var outputs: [TensorSpec]
    public var precision: String?
    public var compression: String?
    public var parameters: Int?
    public var sha256: String?
    public var bytes: Int64?

    public func input(named name: String) -> TensorSpec? { inputs.first { $0.name == name } }
    public func output(named name: String) -> TensorSpec? { outputs.first { $0.name == name } }

    /// True when the model is split into chunks that run one after another (see `ChunkPlan`).
    public var isChunked: Bool { chunks != nil }

    /// The files to compile and load, in run order: the chunks, or the model's own file. Empty when the
    /// entry names neither, which `Manifest.validate()` rejects.
    public var fileSpecs: [ModelFileSpec] {
        if let chunks { return chunks }
        guard let file else { return [] }
        return [ModelFileSpec(file: file, inputs: inputs, outputs: outputs, sha256: sha256, bytes: bytes)]
    }

    /// The file names of `fileSpecs`.
    public var files: [String] { fileSpecs.map(\.file) }
}

/// `pipeline.tokenizer`.
public struct TokenizerSettings: Codable, Equatable {
    public var vocab: String
    public var merges: String
    public var bosTokenId: Int
    public var eosTokenId: Int
    public var padTokenId: Int

    enum CodingKeys: String, CodingKey {
        case vocab
        case merges
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
        case padTokenId = "pad_token_id"
    }
}

/// How the UNet is run for guidance (`pipeline.guidance`).
public enum GuidanceMode: String, CaseIterable {
    /// Batch 2: row 0 unconditional (""), row 1 conditional; noise = u + s * (c - u).
    case cfgBatch2 = "cfg-batch2"
    /// Batch 1, the prompt only, no guidance.
    case none
    /// Batch 1, guidance scale fed as `timestep_cond` (LCM).
    case embedded
}

/// `pipeline`: everything needed to run the models together.
public struct PipelineSettings: Codable, Equatable {
    public var imageHeight: Int
    public var imageWidth: Int
    public var latentChannels: Int
    public var latentHeight: Int
    public var latentWidth: Int
    public var vaeScalingFactor: Double
    public var vaeShiftFactor: Double?
    public var decoderAppliesScaling: Bool
    public var guidance: String
    public var unetBatch: Int
    public var defaultGuidanceScale: Double
    public var defaultSteps: Int
    public var scheduler: String
    public var textMaxLength: Int
    public var textHiddenSize: Int
    public var tokenizer: TokenizerSettings

    enum CodingKeys: String, CodingKey {
        case imageHeight = "image_height"
        case imageWidth = "image_width"
        case latentChannels = "latent_channels"
        case latentHeight = "latent_height"
        case latentWidth = "latent_width"
        case vaeScalingFactor = "vae_scaling_factor"
        case vaeShiftFactor = "vae_shift_factor"
        case decoderAppliesScaling = "decoder_applies_scaling"
        case guidance
        case unetBatch = "unet_batch"
        case defaultGuidanceScale = "default_guidance_scale"
        case defaultSteps = "default_steps"
        case scheduler
        case textMaxLength = "text_max_length"
        case textHiddenSize = "text_hidden_size"
        case tokenizer
    }

    /// The guidance mode, or an error naming the allowed values.
    public func guidanceMode() throws -> GuidanceMode {
        guard let mode = GuidanceMode(rawValue: guidance) else {
            throw ManifestError.invalidField(
                path: "pipeline.guidance",
                reason: "\"\(guidance)\" is not one of \(GuidanceMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return mode
    }

    /// [1, C, h, w]: the shape of the latent the scheduler works on.
    public var latentShape: [Int] { [1, latentChannels, latentHeight, latentWidth] }
}

/// `parity`: `{"status": "pass" | "fail" | "not-run", "report": "parity.json"}`.
public struct ParitySummary: Codable, Equatable {
    public var status: String
    public var report: String?
}

/// `manifest.json` (schema_version 1). Keys not listed here (versions, command, options, source, ...)
/// are ignored, so their exact types never stop the app.
public struct Manifest: Codable, Equatable {
    public static let supportedSchemaVersion = 1
    /// The models this app runs, in the order they are used.
    public static let requiredModels = ["text_encoder", "unet", "vae_decoder"]

    public var schemaVersion: Int
    public var target: String
    public var created: String?
    public var mdExportVersion: String?
    public var pipeline: PipelineSettings
    public var models: [String: ModelSpec]
    public var parity: ParitySummary?

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case target
        case created
        case mdExportVersion = "md_export_version"
        case pipeline
        case models
        case parity
    }

    /// Reads and checks `manifest.json` at `url`.
    public static func load(from url: URL) throws -> Manifest {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw ManifestError.unreadable(file: url.lastPathComponent, reason: error.localizedDescription)
        }
        return try decode(data)
    }

    /// Decodes and checks a manifest. The schema version is checked before anything else, so a
    /// manifest from a newer md-export fails with a version message rather than a missing key.
    public static func decode(_ data: Data) throws -> Manifest {
        struct VersionProbe: Decodable {
            let schemaVersion: Int?
            enum CodingKeys: String, CodingKey { case schemaVersion = "schema_version" }
        }
        let decoder = JSONDecoder()
        let probe: VersionProbe
        do {
            probe = try decoder.decode(VersionProbe.self, from: data)
        } catch let error as DecodingError {
            throw ManifestError.invalidJSON(reason: describe(error))
        } catch {
            throw ManifestError.invalidJSON(reason: error.localizedDescription)
        }
        guard let version = probe.schemaVersion else { throw ManifestError.missingSchemaVersion }
        guard version == supportedSchemaVersion else {
            throw ManifestError.unsupportedSchemaVersion(found: version, supported: supportedSchemaVersion)
        }
        let manifest: Manifest
        do {
            manifest = try decoder.decode(Manifest.self, from: data)
        } catch let error as DecodingError {
            throw ManifestError.invalidJSON(reason: describe(error))
        }
        try manifest.validate()
        return manifest
    }

    /// The model entry `name`, or an error listing the models the manifest has.
    public func model(_ name: String) throws -> ModelSpec {
        guard let spec = models[name] else {
            throw ManifestError.missingModel(name: name, known: Array(models.keys))
        }
        return spec
    }

    /// Consistency checks the app relies on.
    public func validate() throws {
        let p = pipeline
        let mode = try p.guidanceMode()
        let expectedBatch = mode == .cfgBatch2 ? 2 : 1
        guard p.unetBatch == expectedBatch else {
            throw ManifestError.invalidField(
                path: "pipeline.unet_batch",
                reason: "is \(p.unetBatch) but guidance \"\(p.guidance)\" needs batch \(expectedBatch)")
        }
        for (path, value) in [("pipeline.latent_channels", p.latentChannels), ("pipeline.latent_height", p.latentHeight),
                              ("pipeline.latent_width", p.latentWidth), ("pipeline.image_height", p.imageHeight),
                              ("pipeline.image_width", p.imageWidth), ("pipeline.text_max_length", p.textMaxLength),
                              ("pipeline.text_hidden_size", p.textHiddenSize)] where value <= 0 {
            throw ManifestError.invalidField(path: path, reason: "must be positive, got \(value)")
        }
        guard p.textMaxLength >= 2 else {
            throw ManifestError.invalidField(path: "pipeline.text_max_length", reason: "must be at least 2")
        }
        guard p.vaeScalingFactor > 0 else {
            throw ManifestError.invalidField(path: "pipeline.vae_scaling_factor", reason: "must be positive")
        }
        for name in Manifest.requiredModels {
            _ = try model(name)
        }
        for name in models.keys.sorted() {
            let spec = try model(name)
            switch (spec.file, spec.chunks) {
            case (nil, nil): throw ManifestError.noModelFile(model: name)
            case (.some, .some): throw ManifestError.fileAndChunks(model: name)
            case (nil, .some): _ = try ChunkPlan(model: name, spec: spec)
            case (.some, nil): break
            }
        }
        let checks: [(String, String, String)] = [
            ("text_encoder", "input_ids", "input"), ("text_encoder", "last_hidden_state", "output"),
            ("unet", "sample", "input"), ("unet", "timestep", "input"), ("unet", "encoder_hidden_states", "input"),
            ("unet", "noise_pred", "output"), ("vae_decoder", "latent", "input"), ("vae_decoder", "image", "output"),
        ]
        for (modelName, tensorName, direction) in checks {
            let spec = try model(modelName)
            let found = direction == "input" ? spec.input(named: tensorName) : spec.output(named: tensorName)
            if found == nil {
                throw ManifestError.missingTensor(model: modelName, name: tensorName, direction: direction)
            }
        }
        if mode == .embedded {
            let unet = try model("unet")
            if unet.input(named: "timestep_cond") == nil {
                throw ManifestError.missingTensor(model: "unet", name: "timestep_cond", direction: "input")
            }
        }
    }

    /// A one-line, human-readable account of a DecodingError, with the JSON path.
    static func describe(_ error: DecodingError) -> String {
        func path(_ codingPath: [CodingKey]) -> String {
            var text = ""
            for key in codingPath {
                if let index = key.intValue {
                    text += "[\(index)]"
                } else {
                    text += text.isEmpty ? key.stringValue : "." + key.stringValue
                }
            }
            return text.isEmpty ? "(top level)" : text
        }
        switch error {
        case let .keyNotFound(key, context):
            let parent = path(context.codingPath)
            return "missing key \"\(key.stringValue)\" in \(parent)"
        case let .typeMismatch(type, context):
            return "\(path(context.codingPath)): expected \(type)"
        case let .valueNotFound(type, context):
            return "\(path(context.codingPath)): expected \(type), found null"
        case let .dataCorrupted(context):
            if context.codingPath.isEmpty { return "not valid JSON (\(context.debugDescription))" }
            return "\(path(context.codingPath)): \(context.debugDescription)"
        @unknown default:
            return error.localizedDescription
        }
    }
}
