package dev.mdexport.core

/**
 * A source of standard normal samples, drawn a tensor at a time: [randn] returns `count` values
 * in row-major (NCHW) order, like `torch.randn(shape)` with `count` = the product of the shape.
 */
fun interface GaussianSource {
    fun randn(count: Int): FloatArray
}

/** Which generator [Denoiser] draws the initial latents (and LCM's step noise) from. */
enum class NoiseGenerator {
    /** [TorchGenerator]: the same numbers as `torch.randn` with `torch.Generator("cpu").manual_seed(seed)` (default). */
    TORCH,
    /** [SeededGaussian]: SplitMix64 + Box-Muller, the app's earlier generator (images differ from diffusers'). */
    SPLITMIX64;

    fun create(seed: Long): GaussianSource = when (this) {
        TORCH -> TorchGenerator(seed)
        SPLITMIX64 -> SeededGaussian(seed)
    }
}

/**
 * The 32-bit Mersenne Twister (MT19937) seeded as PyTorch's CPU generator seeds it:
 * `state[0] = seed & 0xffffffff`, `state[i] = 1812433253 * (state[i-1] ^ (state[i-1] >>> 30)) + i`.
 */
class MT19937(seed: Long) {
    private val state = IntArray(N)
    private var index = N

    init {
        state[0] = seed.toInt() // low 32 bits
        for (i in 1 until N) {
            val prev = state[i - 1]
            state[i] = 1812433253 * (prev xor (prev ushr 30)) + i
        }
    }

    /** The next 32-bit output, as an unsigned value in a Long. */
    fun nextU32(): Long {
        if (index >= N) twist()
        var y = state[index++]
        y = y xor (y ushr 11)
        y = y xor ((y shl 7) and 0x9D2C5680.toInt())
        y = y xor ((y shl 15) and 0xEFC60000.toInt())
        y = y xor (y ushr 18)
        return y.toLong() and 0xFFFFFFFFL
    }

    private fun twist() {
        for (i in 0 until N) {
            val y = (state[i] and 0x80000000.toInt()) or (state[(i + 1) % N] and 0x7FFFFFFF)
            var v = state[(i + M) % N] xor (y ushr 1)
            if (y and 1 != 0) v = v xor 0x9908B0DF.toInt()
            state[i] = v
        }
        index = 0
    }

    private companion object {
        const val N = 624
        const val M = 397
    }
}

/**
 * `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)`:
 * the same numbers, draw after draw, because the generator state carries over between calls as
 * torch's does (LCM draws its step noise from the generator that made the initial latents).
 *
 * PyTorch's CPU `normal_` for float32:
 * - 16 or more values (`normal_fill`): one uniform per value, `u = (next32() & 0xFFFFFF) / 2^24`;
 *   then per block of 16, for j in 0..7: `r = sqrt(-2 ln(1 - u[j]))`, `theta = 2 pi u[j + 8]`,
 *   `x[j] = r cos(theta)`, `x[j + 8] = r sin(theta)`. When the count is not a multiple of 16 the
 *   last 16 values are drawn again and recomputed. Computed in double and rounded to float (torch
 *   uses float32 SIMD kernels, so values agree to about 1e-6).
 * - fewer than 16 (`normal_distribution<double>`): per value, a cached second sample if there is
 *   one, else `u1`, `u2` = 53-bit uniforms from 64-bit words (two 32-bit outputs, first one high),
 *   `r = sqrt(-2 log1p(-u2))`, `theta = 2 pi u1`; returns `r cos(theta)` and caches `r sin(theta)`.
 *   Bit-exact with torch.
 */
class TorchGenerator(seed: Long) : GaussianSource {
    private val engine = MT19937(seed)
    private var cachedNormal: Double? = null

    private fun uniform24(): Double = (engine.nextU32() and 0xFFFFFFL).toDouble() / 16777216.0

    private fun uniform53(): Double {
        val word = (engine.nextU32() shl 32) or engine.nextU32()
        return (word and ((1L shl 53) - 1)).toDouble() * (1.0 / (1L shl 53))
    }

    override fun randn(count: Int): FloatArray {
        require(count >= 0) { "randn: negative count $count" }
        if (count < 16) return FloatArray(count) { smallNormal().toFloat() }
        val data = DoubleArray(count) { uniform24() }
        var start = 0
        while (start + 16 <= count) { fill16(data, start); start += 16 }
        if (count % 16 != 0) {
            val tail = count - 16
            for (j in 0 until 16) data[tail + j] = uniform24()
            fill16(data, tail)
        }
        return FloatArray(count) { data[it].toFloat() }
    }

    private fun smallNormal(): Double {
        cachedNormal?.let { cachedNormal = null; return it }
        val u1 = uniform53()
        val u2 = uniform53()
        val r = Math.sqrt(-2.0 * Math.log1p(-u2))
        val theta = 2.0 * Math.PI * u1
        cachedNormal = r * Math.sin(theta)
        return r * Math.cos(theta)
    }

    private fun fill16(data: DoubleArray, start: Int) {
        for (j in 0 until 8) {
            val u1 = 1.0 - data[start + j]
            val u2 = data[start + j + 8]
            val r = Math.sqrt(-2.0 * Math.log(u1))
            val theta = 2.0 * Math.PI * u2
            data[start + j] = r * Math.cos(theta)
            data[start + j + 8] = r * Math.sin(theta)
        }
    }
}

/**
 * The app's earlier seeded generator, kept as [NoiseGenerator.SPLITMIX64]: SplitMix64 (Steele,
 * Lea, Flood 2014; the constants of `java.util.SplittableRandom`) gives 64-bit words; the top 53
 * bits make a uniform double in [0, 1); Box-Muller turns two uniforms (u1 = 1 - first, so it is
 * never 0, u2 = second) into two normals, returned cosine first, then sine. It does not
 * reproduce torch, so a seed gives a different image than diffusers; android_demo/core/tools/
 * make_goldens.py has a Python twin.
 */
class SeededGaussian(seed: Long) : GaussianSource {
    private var state: Long = seed
    private var spare: Double = 0.0
    private var hasSpare = false

    fun nextLong(): Long {
        state += -0x61c8864680b583ebL // 0x9E3779B97F4A7C15
        var z = state
        z = (z xor (z ushr 30)) * -0x40a7b892e31b1a47L // 0xBF58476D1CE4E5B9
        z = (z xor (z ushr 27)) * -0x6b2fb644ecceee15L // 0x94D049BB133111EB
        return z xor (z ushr 31)
    }

    fun nextDouble(): Double = (nextLong() ushr 11) * (1.0 / (1L shl 53))

    fun nextGaussian(): Double {
        if (hasSpare) { hasSpare = false; return spare }
        val u1 = 1.0 - nextDouble()
        val u2 = nextDouble()
        val r = Math.sqrt(-2.0 * Math.log(u1))
        val a = 2.0 * Math.PI * u2
        spare = r * Math.sin(a)
        hasSpare = true
        return r * Math.cos(a)
    }

    override fun randn(count: Int): FloatArray = FloatArray(count) { nextGaussian().toFloat() }
}
