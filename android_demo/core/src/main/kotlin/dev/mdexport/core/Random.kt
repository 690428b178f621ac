package dev.mdexport.core

/** A source of standard normal samples. */
interface GaussianSource {
    fun nextGaussian(): Double

    fun fill(out: FloatArray, scale: Double = 1.0) {
        for (i in out.indices) out[i] = (nextGaussian() * scale).toFloat()
    }
}

/**
 * The app's seeded Gaussian generator: SplitMix64 (Steele, Lea, Flood 2014; the constants of
 * `java.util.SplittableRandom`) gives 64-bit words; the top 53 bits make a uniform double in
 * [0, 1); Box-Muller turns two uniforms (u1 = 1 - first, so it is never 0, u2 = second) into
 * two normals, returned cosine first, then sine.
 *
 * It cannot reproduce torch's generator (Philox/MT19937 plus its own normal transform), so the
 * same seed gives a different image than diffusers. It is simple enough to re-implement
 * anywhere: android_demo/core/tools/make_goldens.py has a Python twin, and the tests check both
 * agree. Initial latents are drawn in NCHW order.
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

    override fun nextGaussian(): Double {
        if (hasSpare) { hasSpare = false; return spare }
        val u1 = 1.0 - nextDouble()
        val u2 = nextDouble()
        val r = Math.sqrt(-2.0 * Math.log(u1))
        val a = 2.0 * Math.PI * u2
        spare = r * Math.sin(a)
        hasSpare = true
        return r * Math.cos(a)
    }
}
