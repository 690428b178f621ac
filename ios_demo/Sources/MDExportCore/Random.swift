import Foundation

/// The 32-bit Mersenne Twister (MT19937), seeded like PyTorch's CPU generator:
/// `state[0] = seed & 0xffffffff`, `state[i] = 1812433253 * (state[i-1] ^ (state[i-1] >> 30)) + i`.
public struct MT19937 {
    private var state = [UInt32](repeating: 0, count: 624)
    private var index = 624

    public init(seed: UInt64) {
        state[0] = UInt32(truncatingIfNeeded: seed)
        for i in 1 ..< 624 {
            let previous = state[i - 1]
            state[i] = 1_812_433_253 &* (previous ^ (previous >> 30)) &+ UInt32(i)
        }
    }

    public mutating func next() -> UInt32 {
        if index >= 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    private mutating func twist() {
        for i in 0 ..< 624 {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % 624] & 0x7FFF_FFFF)
            var value = state[(i + 397) % 624] ^ (y >> 1)
            if y & 1 != 0 { value ^= 0x9908_B0DF }
            state[i] = value
        }
        index = 0
    }
}

/// Gaussian noise that reproduces `torch.randn(shape, generator=torch.Generator().manual_seed(seed))`
/// on the CPU for float32 tensors of 16 or more elements, so an image made on the phone can be
/// compared with diffusers' image for the same seed.
///
/// The algorithm (PyTorch's `normal_fill`): draw one uniform per element,
/// `u = (next() & 0xFFFFFF) / 2^24`; then for each block of 16, for j in 0..<8,
/// `r = sqrt(-2 ln(1 - u[j]))`, `theta = 2 pi u[j + 8]`, `x[j] = r cos(theta)`, `x[j + 8] = r sin(theta)`.
/// When the count is not a multiple of 16, the last 16 elements are drawn again and recomputed.
/// Computed in Double and rounded to Float (PyTorch uses float32 SIMD, so values agree to about 1e-6).
/// Counts below 16 use the same block on a 16-element buffer (PyTorch uses another path there; such
/// small tensors never occur in the pipeline). The generator state carries over between calls, like
/// PyTorch's, so LCM's per-step noise also matches.
public struct TorchRandom {
    private var engine: MT19937

    public init(seed: UInt64) {
        engine = MT19937(seed: seed)
    }

    private mutating func uniform() -> Double {
        Double(engine.next() & 0xFF_FFFF) * (1.0 / 16_777_216.0)
    }

    private static func fill16(_ data: inout [Double], _ start: Int) {
        for j in 0 ..< 8 {
            let u1 = 1.0 - data[start + j]
            let u2 = data[start + j + 8]
            let radius = (-2.0 * log(u1)).squareRoot()
            let theta = 2.0 * Double.pi * u2
            data[start + j] = radius * cos(theta)
            data[start + j + 8] = radius * sin(theta)
        }
    }

    public mutating func normal(count: Int) -> [Float] {
        guard count > 0 else { return [] }
        if count < 16 {
            var block = (0 ..< 16).map { _ in uniform() }
            TorchRandom.fill16(&block, 0)
            return block.prefix(count).map { Float($0) }
        }
        var data = [Double](repeating: 0, count: count)
        for i in 0 ..< count { data[i] = uniform() }
        var start = 0
        while start + 16 <= count {
            TorchRandom.fill16(&data, start)
            start += 16
        }
        if count % 16 != 0 {
            let tail = count - 16
            for j in 0 ..< 16 { data[tail + j] = uniform() }
            TorchRandom.fill16(&data, tail)
        }
        return data.map { Float($0) }
    }

    public mutating func normalTensor(shape: [Int]) -> Tensor {
        let values = normal(count: Tensor.elementCount(of: shape))
        // The count matches the shape by construction.
        return try! Tensor(shape: shape, scalars: values)
    }
}
