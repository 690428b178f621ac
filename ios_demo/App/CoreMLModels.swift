import CoreML
import Foundation
#if canImport(MDExportCore)
import MDExportCore  // the local Swift package; without it, compile Sources/MDExportCore into the app
#endif

/// Errors met while finding, compiling or running the Core ML models of a bundle. Each names the file.
enum ModelLoadError: LocalizedError {
    case noModelFolder(searched: [String])
    case missingFile(file: String, folder: String)
    case wrongTarget(target: String)
    case unsupportedModelFile(model: String, file: String)
    case compileFailed(file: String, reason: String)
    case loadFailed(file: String, reason: String)
    case incompatibleModel(model: String, file: String, detail: String)
    case inputMismatch(model: String, detail: String)
    case missingOutput(model: String, name: String)

    var errorDescription: String? {
        switch self {
        case let .noModelFolder(searched):
            return "No model bundle found (looked for manifest.json in: \(searched.joined(separator: "; "))). "
                + "Copy the contents of out/coreml/ into ios_demo/model/ and rebuild, copy the folder into the app's "
                + "Documents as \"model\" with the Files app, or choose a folder."
        case let .missingFile(file, folder):
            return "\(file) is missing from the model folder (\(folder)). Copy the whole out/coreml/ folder."
        case let .wrongTarget(target):
            return "manifest.json is for target \"\(target)\"; this app runs Core ML bundles (out/coreml/)."
        case let .unsupportedModelFile(model, file):
            return "\(model): \(file) is not a Core ML model (.mlpackage, .mlmodelc or .mlmodel)."
        case let .compileFailed(file, reason):
            return "Core ML could not compile \(file): \(reason)"
        case let .loadFailed(file, reason):
            return "Core ML could not load \(file): \(reason)"
        case let .incompatibleModel(model, file, detail):
            return "\(file) does not match the manifest's \(model) entry: \(detail)"
        case let .inputMismatch(model, detail):
            return "\(model): \(detail)"
        case let .missingOutput(model, name):
            return "\(model) produced no multi-array output \"\(name)\""
        }
    }
}

/// Compute-unit choices offered in the UI.
enum ComputeUnitsChoice: String, CaseIterable, Identifiable {
    case all = "All"
    case cpuAndNeuralEngine = "CPU + Neural Engine"
    case cpuAndGPU = "CPU + GPU"
    case cpuOnly = "CPU only"

    var id: String { rawValue }

    var units: MLComputeUnits {
        switch self {
        case .all: return .all
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuOnly: return .cpuOnly
        }
    }
}

/// A Core ML model (a whole model or one chunk) run through md-export's tensor names, taken from its
/// manifest entry.
final class CoreMLDiffusionModel: DiffusionModel {
    let name: String
    let spec: ModelFileSpec
    let model: MLModel

    init(name: String, spec: ModelFileSpec, model: MLModel) throws {
        self.name = name
        self.spec = spec
        self.model = model
        try checkAgainstManifest()
    }

    /// Every manifest input and output must exist in the compiled model, with the same element count.
    private func checkAgainstManifest() throws {
        let description = model.modelDescription
        let inputs = description.inputDescriptionsByName
        let outputs = description.outputDescriptionsByName
        for (specs, features, direction) in [(spec.inputs, inputs, "input"), (spec.outputs, outputs, "output")] {
            for tensor in specs {
                guard let feature = features[tensor.name] else {
                    let known = features.keys.sorted().joined(separator: ", ")
                    throw ModelLoadError.incompatibleModel(
                        model: name, file: spec.file,
                        detail: "no \(direction) named \"\(tensor.name)\" (the model has: \(known))")
                }
                if let constraint = feature.multiArrayConstraint {
                    let shape = constraint.shape.map { $0.intValue }
                    if !shape.isEmpty, shape.reduce(1, *) != tensor.shape.reduce(1, *) {
                        throw ModelLoadError.incompatibleModel(
                            model: name, file: spec.file,
                            detail: "\(direction) \"\(tensor.name)\" has shape \(shape), the manifest says \(tensor.shape)")
                    }
                }
            }
        }
    }

    func run(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        var features: [String: MLFeatureValue] = [:]
        for input in spec.inputs {
            guard let tensor = inputs[input.name] else {
                throw ModelLoadError.inputMismatch(model: name, detail: "no value given for input \"\(input.name)\"")
            }
            let array = try MultiArrayConversion.makeArray(tensor, spec: input, model: name)
            features[input.name] = MLFeatureValue(multiArray: array)
        }
        let provider = try MLDictionaryFeatureProvider(dictionary: features)
        let result = try model.prediction(from: provider)
        var outputs: [String: Tensor] = [:]
        for output in spec.outputs {
            guard let array = result.featureValue(for: output.name)?.multiArrayValue else {
                throw ModelLoadError.missingOutput(model: name, name: output.name)
            }
            outputs[output.name] = try MultiArrayConversion.tensor(from: array)
        }
        return outputs
    }
}

/// MLMultiArray <-> Tensor. Inputs are created with the manifest's dtype (fp16 inputs as .float16 arrays,
/// converted with our own round-to-nearest-even code, so no Float16 type is needed); outputs are read in
/// whatever type Core ML returns (fp32, fp16, double or int32), honouring the array's strides.
enum MultiArrayConversion {
    static func makeArray(_ tensor: Tensor, spec: TensorSpec, model: String) throws -> MLMultiArray {
        guard tensor.shape == spec.shape else {
            throw ModelLoadError.inputMismatch(
                model: model, detail: "input \"\(spec.name)\" has shape \(tensor.shape); the manifest says \(spec.shape)")
        }
        let dataType: MLMultiArrayDataType
        switch spec.dtype {
        case .float32: dataType = .float32
        case .float16: dataType = .float16
        case .int32, .int64: dataType = .int32  // Core ML multi-arrays have no int64; converters emit int32.
        }
        let array = try MLMultiArray(shape: spec.shape.map { NSNumber(value: $0) }, dataType: dataType)
        let shape = spec.shape
        let scalars = tensor.scalars
        array.withUnsafeMutableBytes { raw, strides in
            guard let base = raw.baseAddress else { return }
            forEachOffset(shape: shape, strides: strides) { index, offset in
                let value = scalars[index]
                switch dataType {
                case .float16:
                    base.storeBytes(of: halfBits(value), toByteOffset: offset * 2, as: UInt16.self)
                case .int32:
                    base.storeBytes(of: Int32(value.rounded()), toByteOffset: offset * 4, as: Int32.self)
                default:
                    base.storeBytes(of: value, toByteOffset: offset * 4, as: Float.self)
                }
            }
        }
        return array
    }

    static func tensor(from array: MLMultiArray) throws -> Tensor {
        let shape = array.shape.map { $0.intValue }
        let dataType = array.dataType
        var scalars = [Float](repeating: 0, count: shape.reduce(1, *))
        // withUnsafeMutableBytes (not withUnsafeBytes) because it reports the strides valid inside the
        // closure, which Core ML documents may differ from `array.strides` for pixel-buffer-backed outputs.
        array.withUnsafeMutableBytes { raw, strides in
            guard let base = raw.baseAddress else { return }
            forEachOffset(shape: shape, strides: strides) { index, offset in
                switch dataType {
                case .float16:
                    scalars[index] = float(fromHalfBits: base.load(fromByteOffset: offset * 2, as: UInt16.self))
                case .double:
                    scalars[index] = Float(base.load(fromByteOffset: offset * 8, as: Double.self))
                case .int32:
                    scalars[index] = Float(base.load(fromByteOffset: offset * 4, as: Int32.self))
                default:
                    scalars[index] = base.load(fromByteOffset: offset * 4, as: Float.self)
                }
            }
        }
        return try Tensor(shape: shape, scalars: scalars)
    }

    /// Calls `body(rowMajorIndex, elementOffset)` for every element, walking the strides.
    static func forEachOffset(shape: [Int], strides: [Int], _ body: (Int, Int) -> Void) {
        let count = shape.reduce(1, *)
        guard count > 0 else { return }
        let rank = shape.count
        if rank == 0 {
            body(0, 0)
            return
        }
        var contiguous = true
        var expected = 1
        for axis in stride(from: rank - 1, through: 0, by: -1) {
            if shape[axis] > 1, strides[axis] != expected { contiguous = false }
            expected *= shape[axis]
        }
        if contiguous {
            for i in 0 ..< count { body(i, i) }
            return
        }
        var indices = [Int](repeating: 0, count: rank)
        for i in 0 ..< count {
            var offset = 0
            for axis in 0 ..< rank { offset += indices[axis] * strides[axis] }
            body(i, offset)
            var axis = rank - 1
            while axis >= 0 {
                indices[axis] += 1
                if indices[axis] < shape[axis] { break }
                indices[axis] = 0
                axis -= 1
            }
        }
    }

    /// IEEE 754 binary16 bits of `value`, round to nearest even (checked against numpy for 800k values).
    static func halfBits(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        let sign = UInt16((bits >> 16) & 0x8000)
        let exponent = Int((bits >> 23) & 0xFF)
        var mantissa = bits & 0x7F_FFFF
        if exponent == 0xFF {
            return sign | 0x7C00 | (mantissa != 0 ? 0x200 : 0)
        }
        let e = exponent - 127 + 15
        if e >= 0x1F { return sign | 0x7C00 }
        if e <= 0 {
            if e < -10 { return sign }
            mantissa |= 0x80_0000
            let shift = UInt32(14 - e)
            var half = mantissa >> shift
            let remainder = mantissa & ((UInt32(1) << shift) - 1)
            let halfway = UInt32(1) << (shift - 1)
            if remainder > halfway || (remainder == halfway && (half & 1) == 1) { half += 1 }
            return sign | UInt16(half)
        }
        var half = (UInt32(e) << 10) | (mantissa >> 13)
        let remainder = mantissa & 0x1FFF
        if remainder > 0x1000 || (remainder == 0x1000 && (half & 1) == 1) { half += 1 }
        return sign | UInt16(half)
    }

    static func float(fromHalfBits h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = UInt32((h >> 10) & 0x1F)
        let mantissa = UInt32(h & 0x3FF)
        if exponent == 0 {
            let magnitude = Float(mantissa) / 16_777_216  // mantissa * 2^-24
            return sign != 0 ? -magnitude : magnitude
        }
        if exponent == 0x1F {
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }
}

/// A bundle folder with everything loaded and ready to generate.
struct LoadedBundle {
    let folder: URL
    let manifest: Manifest
    let denoiser: Denoiser
    let loadSeconds: Double
    let notes: [String]
}

/// Finds, compiles (once, cached) and loads the models of an `out/coreml/` bundle.
enum BundleLoader {
    static let modelNames = Manifest.requiredModels  // text_encoder, unet, vae_decoder

    /// Folders searched, in order, when the user has not picked one: Documents/model (copied with the Files
    /// app or Finder), then the "model" folder reference inside the app.
    static func defaultFolders() -> [URL] {
        var folders: [URL] = []
        if let documents = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask).first {
            folders.append(documents.appendingPathComponent("model", isDirectory: true))
        }
        if let bundled = Bundle.main.url(forResource: "model", withExtension: nil) {
            folders.append(bundled)
        }
        return folders
    }

    static func firstFolderWithManifest() throws -> URL {
        let folders = defaultFolders()
        for folder in folders where FileManager.default.fileExists(atPath: folder.appendingPathComponent("manifest.json").path) {
            return folder
        }
        throw ModelLoadError.noModelFolder(searched: folders.map { $0.path })
    }

    static func load(folder: URL, computeUnits: MLComputeUnits, status: @escaping (String) -> Void) async throws -> LoadedBundle {
        let start = Date()
        var notes: [String] = []
        let manifestURL = folder.appendingPathComponent("manifest.json")
        guard FileManager.default.fileExists(atPath: manifestURL.path) else {
            throw ModelLoadError.missingFile(file: "manifest.json", folder: folder.lastPathComponent)
        }
        status("Reading manifest.json")
        let manifest = try Manifest.load(from: manifestURL)
        guard manifest.target == "coreml" else { throw ModelLoadError.wrongTarget(target: manifest.target) }
        if manifest.parity?.status == "fail" {
            notes.append("The bundle's parity check failed (see parity.md); images may be wrong.")
        }

        for file in [manifest.pipeline.tokenizer.vocab, manifest.pipeline.tokenizer.merges, "scheduler.json"] {
            guard FileManager.default.fileExists(atPath: folder.appendingPathComponent(file).path) else {
                throw ModelLoadError.missingFile(file: file, folder: folder.lastPathComponent)
            }
        }
        status("Loading tokenizer")
        let tokenizer = try ClipTokenizer(manifest: manifest, folder: folder)
        let schedulerConfig = try SchedulerConfig.load(from: folder.appendingPathComponent("scheduler.json"))

        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        var models: [String: DiffusionModel] = [:]
        for name in modelNames {
            let spec = try manifest.model(name)
            models[name] = try await loadModel(name: name, spec: spec, folder: folder, configuration: configuration,
                                               status: status)
        }
        guard let textEncoder = models["text_encoder"], let unet = models["unet"], let decoder = models["vae_decoder"] else {
            throw ModelLoadError.missingFile(file: "a model", folder: folder.lastPathComponent)
        }
        let denoiser = Denoiser(manifest: manifest, tokenizer: tokenizer, schedulerConfig: schedulerConfig,
                                textEncoder: textEncoder, unet: unet, decoder: decoder)
        if denoiser.manifestScheduler == nil {
            notes.append("The bundle's default scheduler \"\(manifest.pipeline.scheduler)\" is not implemented here; "
                + "using euler.")
        }
        return LoadedBundle(folder: folder, manifest: manifest, denoiser: denoiser,
                            loadSeconds: Date().timeIntervalSince(start), notes: notes)
    }

    /// One manifest entry, ready to run. A chunked entry (`chunks`, for iOS's per-file size limit) becomes a
    /// `ChunkedModel` over all its chunks, each compiled and loaded like a whole model; they stay loaded
    /// together, so the memory held is the whole model's (see README).
    static func loadModel(name: String, spec: ModelSpec, folder: URL, configuration: MLModelConfiguration,
                          status: (String) -> Void) async throws -> DiffusionModel {
        guard spec.isChunked else {
            guard let whole = spec.fileSpecs.first else { throw ManifestError.noModelFile(model: name) }
            return try await loadFile(name: name, spec: whole, folder: folder, configuration: configuration, status: status)
        }
        // TODO: a reduce-memory mode that loads each chunk only for its prediction and unloads it afterwards.
        let plan = try ChunkPlan(model: name, spec: spec)
        var chunks: [DiffusionModel] = []
        for (index, chunk) in plan.chunks.enumerated() {
            let chunkName = "\(name) chunk \(index + 1) of \(plan.chunks.count)"
            let model = try await loadFile(name: chunkName, spec: chunk, folder: folder, configuration: configuration,
                                           status: status)
            chunks.append(model)
        }
        return ChunkedModel(plan: plan, chunks: chunks)
    }

    /// Compiles (once) and loads one file, and checks it against its manifest inputs and outputs.
    static func loadFile(name: String, spec: ModelFileSpec, folder: URL, configuration: MLModelConfiguration,
                         status: (String) -> Void) async throws -> CoreMLDiffusionModel {
        let compiledURL = try await compiledModel(name: name, spec: spec, folder: folder, status: status)
        status("Loading \(name) (first load on the Neural Engine can take minutes)")
        let model: MLModel
        do {
            model = try MLModel(contentsOf: compiledURL, configuration: configuration)
        } catch {
            throw ModelLoadError.loadFailed(file: spec.file, reason: error.localizedDescription)
        }
        return try CoreMLDiffusionModel(name: name, spec: spec, model: model)
    }

    /// The compiled `.mlmodelc` for a model file or chunk: the file itself if it is compiled, a sibling
    /// `<name>.mlmodelc` if the bundle has one, else the `.mlpackage`/`.mlmodel` compiled on the device
    /// and cached in Application Support (keyed by the manifest's sha256, so a new export recompiles).
    static func compiledModel(name: String, spec: ModelFileSpec, folder: URL,
                              status: (String) -> Void) async throws -> URL {
        let fm = FileManager.default
        let source = folder.appendingPathComponent(spec.file)
        let ext = source.pathExtension.lowercased()
        guard ["mlpackage", "mlmodelc", "mlmodel"].contains(ext) else {
            throw ModelLoadError.unsupportedModelFile(model: name, file: spec.file)
        }
        if ext == "mlmodelc" {
            guard fm.fileExists(atPath: source.path) else {
                throw ModelLoadError.missingFile(file: spec.file, folder: folder.lastPathComponent)
            }
            return source
        }
        let sibling = source.deletingPathExtension().appendingPathExtension("mlmodelc")
        if fm.fileExists(atPath: sibling.path) { return sibling }
        guard fm.fileExists(atPath: source.path) else {
            throw ModelLoadError.missingFile(file: spec.file, folder: folder.lastPathComponent)
        }

        let cacheRoot = try fm.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            .appendingPathComponent("CompiledModels", isDirectory: true)
        let key = cacheKey(spec: spec, source: source)
        let cacheDir = cacheRoot.appendingPathComponent(key, isDirectory: true)
        let cached = cacheDir.appendingPathComponent(source.deletingPathExtension().lastPathComponent + ".mlmodelc")
        if fm.fileExists(atPath: cached.path) { return cached }

        status("Compiling \(spec.file) (first run only)")
        let compiledTemp: URL
        do {
            compiledTemp = try await MLModel.compileModel(at: source)
        } catch {
            throw ModelLoadError.compileFailed(file: spec.file, reason: error.localizedDescription)
        }
        try fm.createDirectory(at: cacheDir, withIntermediateDirectories: true)
        if fm.fileExists(atPath: cached.path) { try? fm.removeItem(at: cached) }
        do {
            try fm.moveItem(at: compiledTemp, to: cached)
        } catch {
            try fm.copyItem(at: compiledTemp, to: cached)
        }
        return cached
    }

    static func cacheKey(spec: ModelFileSpec, source: URL) -> String {
        if let sha = spec.sha256, !sha.isEmpty {
            return String(sha.prefix(32))
        }
        // No digest in the manifest: fall back on the package's size and date (weaker).
        let values = try? source.resourceValues(forKeys: [.contentModificationDateKey])
        let stamp = Int(values?.contentModificationDate?.timeIntervalSince1970 ?? 0)
        return "nosha-\(spec.bytes ?? 0)-\(stamp)"
    }

    /// Deletes every cached compiled model.
    static func clearCache() throws {
        let fm = FileManager.default
        let root = try fm.url(for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            .appendingPathComponent("CompiledModels", isDirectory: true)
        if fm.fileExists(atPath: root.path) { try fm.removeItem(at: root) }
    }
}
