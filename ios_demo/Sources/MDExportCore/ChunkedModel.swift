import Foundation

/// How a chunked model entry runs (docs/bundle-format.md, `chunks`): chunk 1 takes the model's inputs,
/// each later chunk takes tensors named in its `inputs` from the model's inputs and the outputs of the
/// chunks before it, and the last chunk's outputs are the model's.
///
/// The plan is worked out from the manifest alone, so a bundle whose chunks do not fit together is
/// refused when the manifest is read, before any Core ML model is compiled.
public struct ChunkPlan: Equatable {
    public let model: String
    public let chunks: [ModelFileSpec]
    /// `feeds[i]`: the tensor names chunk i is given, in the order of its manifest inputs.
    public let feeds: [[String]]
    /// `releases[i]`: the tensors no later chunk takes, dropped after chunk i has run so that only the
    /// tensors still needed are held (sorted; empty for the last chunk, whose outputs are returned).
    public let releases: [[String]]

    /// Throws a `ManifestError` naming the model, chunk and tensor when a chunk takes a tensor that
    /// nothing before it provides, or when the last chunk does not output one of the model's outputs.
    public init(model: String, spec: ModelSpec) throws {
        guard let chunks = spec.chunks, let last = chunks.last else {
            throw ManifestError.noModelFile(model: model)
        }
        var available = Set(spec.inputs.map(\.name))
        var lastUse: [String: Int] = [:]
        for (index, chunk) in chunks.enumerated() {
            for input in chunk.inputs {
                guard available.contains(input.name) else {
                    throw ManifestError.chunkInputNotProduced(model: model, chunk: index + 1, file: chunk.file, name: input.name)
                }
                lastUse[input.name] = index
            }
            available.formUnion(chunk.outputs.map(\.name))
        }
        let lastOutputs = Set(last.outputs.map(\.name))
        for output in spec.outputs where !lastOutputs.contains(output.name) {
            throw ManifestError.chunkOutputMissing(model: model, file: last.file, name: output.name)
        }

        // Replay the run: after chunk i, whatever is held and not taken by a later chunk can go.
        var held = Set(spec.inputs.map(\.name))
        var releases: [[String]] = []
        for (index, chunk) in chunks.enumerated() {
            held.formUnion(chunk.outputs.map(\.name))
            if index == chunks.count - 1 {
                releases.append([])
                break
            }
            let done = held.filter { (lastUse[$0] ?? -1) <= index }
            held.subtract(done)
            releases.append(done.sorted())
        }
        self.model = model
        self.chunks = chunks
        self.feeds = chunks.map { $0.inputs.map(\.name) }
        self.releases = releases
    }
}

/// Raised while running a chunked model, when a tensor a chunk needs was not there (a model input the
/// caller did not give, or an output an earlier chunk did not return).
public enum ChunkRunError: Error, Equatable, LocalizedError {
    case missingInput(model: String, chunk: Int, file: String, name: String, available: [String])

    public var errorDescription: String? {
        switch self {
        case let .missingInput(model, chunk, file, name, available):
            return "\(model) chunk \(chunk) (\(file)) needs \"\(name)\", which neither the inputs nor an earlier chunk "
                + "produced (held: \(available.sorted().joined(separator: ", ")))"
        }
    }
}

/// A chunked model run as one `DiffusionModel`: the chunks run in turn, each fed by name from the model's
/// inputs and the earlier chunks' outputs (md-export's `compress.chunk.chain` is the reference).
/// Tensors are dropped as soon as no later chunk needs them.
public final class ChunkedModel: DiffusionModel {
    public let plan: ChunkPlan
    private let chunks: [DiffusionModel]

    /// `chunks[i]` runs `plan.chunks[i]`.
    public init(plan: ChunkPlan, chunks: [DiffusionModel]) {
        precondition(chunks.count == plan.chunks.count,
                     "\(plan.model): \(chunks.count) chunk models for \(plan.chunks.count) chunks")
        self.plan = plan
        self.chunks = chunks
    }

    public func run(_ inputs: [String: Tensor]) throws -> [String: Tensor] {
        var held = inputs
        var outputs: [String: Tensor] = [:]
        for (index, chunk) in chunks.enumerated() {
            var feed: [String: Tensor] = [:]
            for name in plan.feeds[index] {
                guard let tensor = held[name] else {
                    throw ChunkRunError.missingInput(model: plan.model, chunk: index + 1, file: plan.chunks[index].file,
                                                     name: name, available: Array(held.keys))
                }
                feed[name] = tensor
            }
            outputs = try chunk.run(feed)
            held.merge(outputs) { _, new in new }
            for name in plan.releases[index] {
                held[name] = nil
            }
        }
        return outputs
    }
}
