import Foundation

/// Errors raised when tensor shapes or element counts do not fit.
public enum TensorError: Error, Equatable, LocalizedError {
    case countMismatch(shape: [Int], count: Int)
    case shapeMismatch(expected: [Int], got: [Int], context: String)
    case batchIndexOutOfRange(index: Int, batch: Int)
    case emptyConcatenation

    public var errorDescription: String? {
        switch self {
        case let .countMismatch(shape, count):
            return "shape \(shape) holds \(Tensor.elementCount(of: shape)) values, got \(count)"
        case let .shapeMismatch(expected, got, context):
            return "\(context): expected shape \(expected), got \(got)"
        case let .batchIndexOutOfRange(index, batch):
            return "batch index \(index) out of range for batch size \(batch)"
        case .emptyConcatenation:
            return "cannot concatenate an empty list of tensors"
        }
    }
}

/// A dense, row-major (C order) tensor of Float values with a static shape.
///
/// Integer inputs (token ids) are carried as Float as well; every CLIP token id (< 2^24) is exact in
/// Float. The Core ML wrapper in the app converts to the dtype the manifest asks for.
public struct Tensor: Equatable {
    public let shape: [Int]
    public var scalars: [Float]

    public static func elementCount(of shape: [Int]) -> Int {
        shape.reduce(1, *)
    }

    /// Creates a tensor; throws if `scalars.count` does not match `shape`.
    public init(shape: [Int], scalars: [Float]) throws {
        guard shape.allSatisfy({ $0 >= 0 }), Tensor.elementCount(of: shape) == scalars.count else {
            throw TensorError.countMismatch(shape: shape, count: scalars.count)
        }
        self.shape = shape
        self.scalars = scalars
    }

    public init(repeating value: Float, shape: [Int]) {
        self.shape = shape
        self.scalars = [Float](repeating: value, count: Tensor.elementCount(of: shape))
    }

    public init(zeros shape: [Int]) {
        self.init(repeating: 0, shape: shape)
    }

    public var count: Int { scalars.count }

    /// The same values with another shape of the same element count.
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        try Tensor(shape: newShape, scalars: scalars)
    }

    /// Row `index` along the first (batch) dimension, keeping a leading dimension of 1.
    public func batchRow(_ index: Int) throws -> Tensor {
        guard let batch = shape.first, index >= 0, index < batch else {
            throw TensorError.batchIndexOutOfRange(index: index, batch: shape.first ?? 0)
        }
        let rowCount = batch == 0 ? 0 : count / batch
        let start = index * rowCount
        return try Tensor(shape: [1] + Array(shape.dropFirst()), scalars: Array(scalars[start ..< start + rowCount]))
    }

    /// Concatenates tensors along the first (batch) dimension; the other dimensions must agree.
    public static func concatenateBatch(_ tensors: [Tensor]) throws -> Tensor {
        guard let first = tensors.first, !first.shape.isEmpty else { throw TensorError.emptyConcatenation }
        let rest = Array(first.shape.dropFirst())
        var batch = 0
        var values: [Float] = []
        values.reserveCapacity(tensors.reduce(0) { $0 + $1.count })
        for t in tensors {
            guard t.shape.count == first.shape.count, Array(t.shape.dropFirst()) == rest else {
                throw TensorError.shapeMismatch(expected: [t.shape.first ?? 0] + rest, got: t.shape,
                                                context: "concatenateBatch")
            }
            batch += t.shape[0]
            values.append(contentsOf: t.scalars)
        }
        return try Tensor(shape: [batch] + rest, scalars: values)
    }

    /// Throws unless the shape is exactly `expected`.
    public func checkShape(_ expected: [Int], _ context: String) throws {
        guard shape == expected else {
            throw TensorError.shapeMismatch(expected: expected, got: shape, context: context)
        }
    }

    public func map(_ transform: (Float) -> Float) -> Tensor {
        var out = self
        for i in out.scalars.indices { out.scalars[i] = transform(out.scalars[i]) }
        return out
    }

    /// Element-wise combination of two tensors of the same shape.
    public func zipWith(_ other: Tensor, _ combine: (Float, Float) -> Float) throws -> Tensor {
        try other.checkShape(shape, "element-wise operation")
        var out = self
        for i in out.scalars.indices { out.scalars[i] = combine(scalars[i], other.scalars[i]) }
        return out
    }

    public func scaled(by factor: Float) -> Tensor {
        map { $0 * factor }
    }

    public var maxAbs: Float {
        scalars.reduce(0) { Swift.max($0, abs($1)) }
    }
}
