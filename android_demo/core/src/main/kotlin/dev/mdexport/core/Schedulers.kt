package dev.mdexport.core

import kotlin.math.cos
import kotlin.math.ceil
import kotlin.math.exp
import kotlin.math.floor
import kotlin.math.ln
import kotlin.math.pow
import kotlin.math.sqrt

/**
 * The parts of a diffusers scheduler config (`scheduler.json`) the schedulers here read.
 * Missing keys take diffusers' defaults for the scheduler being built, so an Euler config
 * turned into DDIM behaves like `DDIMScheduler.from_config(euler_config)`.
 */
class SchedulerConfig(val json: JsonObject) {
    val className: String = json.stringOr("_class_name", "")
    val numTrainTimesteps: Int = json.intOr("num_train_timesteps", 1000)
    val betaStart: Double = json.doubleOr("beta_start", 0.0001)
    val betaEnd: Double = json.doubleOr("beta_end", 0.02)
    val betaSchedule: String = json.stringOr("beta_schedule", "linear")
    val trainedBetas: List<Double>? = if (json.has("trained_betas")) json.doubleList("trained_betas") else null
    val stepsOffset: Int = json.intOr("steps_offset", 0)
    val timestepSpacing: String = json.stringOr("timestep_spacing", "leading")
    val predictionType: String = json.stringOr("prediction_type", "epsilon")
    val rescaleBetasZeroSnr: Boolean = json.boolOr("rescale_betas_zero_snr", false)
    fun bool(key: String, default: Boolean) = json.boolOr(key, default)
    fun double(key: String, default: Double) = json.doubleOr(key, default)
    fun int(key: String, default: Int) = json.intOr(key, default)
    fun string(key: String, default: String) = json.stringOr(key, default)

    /** alphas_cumprod over the training timesteps, as diffusers computes it (in double precision here). */
    fun alphasCumprod(): DoubleArray {
        val n = numTrainTimesteps
        var betas: DoubleArray = when {
            trainedBetas != null -> trainedBetas.toDoubleArray()
            betaSchedule == "linear" -> linspace(betaStart, betaEnd, n)
            betaSchedule == "scaled_linear" -> linspace(sqrt(betaStart), sqrt(betaEnd), n).map { it * it }.toDoubleArray()
            betaSchedule == "squaredcos_cap_v2" -> DoubleArray(n) { i ->
                fun alphaBar(t: Double) = cos((t + 0.008) / 1.008 * Math.PI / 2).pow(2)
                minOf(1 - alphaBar((i + 1).toDouble() / n) / alphaBar(i.toDouble() / n), 0.999)
            }
            else -> throw BundleException(
                "scheduler.json: beta_schedule \"$betaSchedule\" is not supported (linear, scaled_linear, squaredcos_cap_v2)"
            )
        }
        if (rescaleBetasZeroSnr) betas = rescaleZeroTerminalSnr(betas)
        val ac = DoubleArray(n)
        var prod = 1.0
        for (i in 0 until n) { prod *= 1.0 - betas[i]; ac[i] = prod }
        return ac
    }

    companion object {
        fun parse(text: String, source: String = "scheduler.json") = try {
            SchedulerConfig(Json.parseObject(text, source))
        } catch (e: JsonException) {
            throw BundleException(e.message ?: "$source: invalid")
        }

        /** numpy.linspace(start, stop, num) with endpoint. */
        fun linspace(start: Double, stop: Double, num: Int): DoubleArray {
            if (num == 1) return doubleArrayOf(start)
            val step = (stop - start) / (num - 1)
            return DoubleArray(num) { i -> if (i == num - 1) stop else start + i * step }
        }

        private fun rescaleZeroTerminalSnr(betas: DoubleArray): DoubleArray {
            val n = betas.size
            val sqrtBar = DoubleArray(n)
            var prod = 1.0
            for (i in 0 until n) { prod *= 1.0 - betas[i]; sqrtBar[i] = sqrt(prod) }
            val first = sqrtBar[0]
            val last = sqrtBar[n - 1]
            for (i in 0 until n) sqrtBar[i] = (sqrtBar[i] - last) * first / (first - last)
            val bar = DoubleArray(n) { sqrtBar[it] * sqrtBar[it] }
            return DoubleArray(n) { i -> 1.0 - if (i == 0) bar[0] else bar[i] / bar[i - 1] }
        }
    }
}

/** One sampling algorithm with its timesteps fixed for a number of steps. */
interface Scheduler {
    /** The value fed to the UNet's `timestep` input at each step. */
    val timesteps: DoubleArray
    /** Standard deviation of the initial latent noise. */
    val initNoiseSigma: Double
    fun scaleModelInput(sample: FloatArray, stepIndex: Int): FloatArray
    /** The sample for the next step; [noise] is used only by stochastic samplers (LCM). */
    fun step(modelOutput: FloatArray, stepIndex: Int, sample: FloatArray, noise: GaussianSource): FloatArray
}

object Schedulers {
    /** Names accepted in `pipeline.scheduler` that this app implements. */
    val supported = listOf("euler", "ddim", "lcm")

    fun create(name: String, config: SchedulerConfig, steps: Int): Scheduler {
        require(steps >= 1) { "steps must be at least 1" }
        return when (name) {
            "euler" -> EulerDiscrete(config, steps)
            "ddim" -> Ddim(config, steps)
            "lcm" -> Lcm(config, steps)
            else -> throw BundleException(
                "scheduler \"$name\" is not implemented in this app (available: ${supported.joinToString()})"
            )
        }
    }

    internal fun predictionTypeError(p: String, name: String): Nothing =
        throw BundleException("scheduler.json: prediction_type \"$p\" is not supported by $name")

    /** Python's round(): half to even, as numpy rounds. */
    internal fun roundHalfEven(x: Double): Double = Math.rint(x)

    /** numpy.arange(start, stop, step) for a float step. */
    internal fun arange(start: Double, stop: Double, step: Double): DoubleArray {
        val n = maxOf(0, ceil((stop - start) / step).toInt())
        return DoubleArray(n) { start + it * step }
    }
}

/** diffusers' EulerDiscreteScheduler (s_churn = 0: deterministic). */
class EulerDiscrete(config: SchedulerConfig, steps: Int) : Scheduler {
    override val timesteps: DoubleArray
    val sigmas: DoubleArray
    override val initNoiseSigma: Double
    private val prediction = config.predictionType

    init {
        val n = config.numTrainTimesteps
        if (config.string("timestep_type", "discrete") != "discrete") {
            throw BundleException("scheduler.json: timestep_type \"${config.string("timestep_type", "")}\" is not supported by euler")
        }
        if (prediction !in setOf("epsilon", "v_prediction")) Schedulers.predictionTypeError(prediction, "euler")
        val ac = config.alphasCumprod()
        if (config.rescaleBetasZeroSnr) ac[n - 1] = 2.0.pow(-24)
        val allSigmas = DoubleArray(n) { sqrt((1 - ac[it]) / ac[it]) }
        var ts: DoubleArray = when (config.timestepSpacing) {
            // float32 in diffusers
            "linspace" -> SchedulerConfig.linspace(0.0, (n - 1).toDouble(), steps).map { it.toFloat().toDouble() }.reversed().toDoubleArray()
            "leading" -> {
                val ratio = n / steps
                DoubleArray(steps) { ((steps - 1 - it) * ratio + config.stepsOffset).toDouble() }
            }
            "trailing" -> Schedulers.arange(n.toDouble(), 0.0, -n.toDouble() / steps).map { Schedulers.roundHalfEven(it) - 1 }.toDoubleArray()
            else -> throw BundleException("scheduler.json: timestep_spacing \"${config.timestepSpacing}\" is not supported")
        }
        if (config.string("interpolation_type", "linear") != "linear") {
            throw BundleException("scheduler.json: interpolation_type \"${config.string("interpolation_type", "")}\" is not supported")
        }
        var sig = DoubleArray(ts.size) { interp(ts[it], allSigmas) }
        if (config.bool("use_karras_sigmas", false)) {
            val rho = 7.0
            val sMin = config.double("sigma_min", sig.last())
            val sMax = config.double("sigma_max", sig.first())
            val ramp = SchedulerConfig.linspace(0.0, 1.0, steps)
            val minInv = sMin.pow(1 / rho)
            val maxInv = sMax.pow(1 / rho)
            sig = DoubleArray(steps) { (maxInv + ramp[it] * (minInv - maxInv)).pow(rho) }
            val logSigmas = DoubleArray(n) { ln(allSigmas[it]) }
            ts = DoubleArray(steps) { sigmaToT(sig[it], logSigmas) }
        } else if (config.bool("use_exponential_sigmas", false) || config.bool("use_beta_sigmas", false)) {
            throw BundleException("scheduler.json: exponential and beta sigmas are not supported by euler")
        }
        val last = when (val f = config.string("final_sigmas_type", "zero")) {
            "zero" -> 0.0
            "sigma_min" -> sqrt((1 - ac[0]) / ac[0])
            else -> throw BundleException("scheduler.json: final_sigmas_type \"$f\" is not supported")
        }
        // diffusers stores sigmas and timesteps as float32
        sigmas = DoubleArray(sig.size + 1) { if (it < sig.size) sig[it].toFloat().toDouble() else last.toFloat().toDouble() }
        timesteps = DoubleArray(ts.size) { ts[it].toFloat().toDouble() }
        val maxSigma = sigmas.maxOrNull()!!
        initNoiseSigma = if (config.timestepSpacing == "linspace" || config.timestepSpacing == "trailing") maxSigma
        else sqrt(maxSigma * maxSigma + 1)
    }

    private fun interp(t: Double, table: DoubleArray): Double {
        if (t <= 0) return table[0]
        if (t >= table.size - 1) return table[table.size - 1]
        val i = floor(t).toInt()
        return table[i] + (table[i + 1] - table[i]) * (t - i)
    }

    private fun sigmaToT(sigma: Double, logSigmas: DoubleArray): Double {
        val logSigma = ln(maxOf(sigma, 1e-10))
        var low = 0
        for (i in logSigmas.indices) if (logSigma - logSigmas[i] >= 0) low = i
        low = minOf(low, logSigmas.size - 2)
        val lo = logSigmas[low]
        val hi = logSigmas[low + 1]
        val w = ((lo - logSigma) / (lo - hi)).coerceIn(0.0, 1.0)
        return (1 - w) * low + w * (low + 1)
    }

    override fun scaleModelInput(sample: FloatArray, stepIndex: Int): FloatArray {
        val s = sigmas[stepIndex]
        val f = 1.0 / sqrt(s * s + 1)
        return FloatArray(sample.size) { (sample[it] * f).toFloat() }
    }

    override fun step(modelOutput: FloatArray, stepIndex: Int, sample: FloatArray, noise: GaussianSource): FloatArray {
        val sigma = sigmas[stepIndex]
        val dt = sigmas[stepIndex + 1] - sigma
        val out = FloatArray(sample.size)
        for (i in sample.indices) {
            val x = sample[i].toDouble()
            val e = modelOutput[i].toDouble()
            val x0 = if (prediction == "epsilon") x - sigma * e else e * (-sigma / sqrt(sigma * sigma + 1)) + x / (sigma * sigma + 1)
            val derivative = (x - x0) / sigma
            out[i] = (x + derivative * dt).toFloat()
        }
        return out
    }
}

/** Shared alpha-based parts of DDIM and LCM. */
abstract class AlphaScheduler(config: SchedulerConfig, private val name: String) : Scheduler {
    protected val n = config.numTrainTimesteps
    protected val alphasCumprod = config.alphasCumprod()
    protected val finalAlphaCumprod = if (config.bool("set_alpha_to_one", true)) 1.0 else alphasCumprod[0]
    protected val prediction = config.predictionType
    private val clipSample = config.bool("clip_sample", defaultClipSample())
    private val clipRange = config.double("clip_sample_range", 1.0)
    override val initNoiseSigma: Double = 1.0

    init {
        if (config.bool("thresholding", false)) throw BundleException("scheduler.json: thresholding is not supported by $name")
        if (prediction !in setOf("epsilon", "v_prediction", "sample")) Schedulers.predictionTypeError(prediction, name)
    }

    protected open fun defaultClipSample() = true

    protected fun alphaAt(t: Int) = if (t >= 0) alphasCumprod[t] else finalAlphaCumprod

    /** (pred_original_sample, pred_epsilon) for one element. */
    protected fun predict(x: Double, out: Double, alpha: Double): Pair<Double, Double> {
        val beta = 1 - alpha
        var x0: Double
        val eps: Double
        when (prediction) {
            "epsilon" -> { x0 = (x - sqrt(beta) * out) / sqrt(alpha); eps = out }
            "sample" -> { x0 = out; eps = (x - sqrt(alpha) * x0) / sqrt(beta) }
            else -> { x0 = sqrt(alpha) * x - sqrt(beta) * out; eps = sqrt(alpha) * out + sqrt(beta) * x }
        }
        if (clipSample) x0 = x0.coerceIn(-clipRange, clipRange)
        return x0 to eps
    }

    override fun scaleModelInput(sample: FloatArray, stepIndex: Int): FloatArray = sample.copyOf()
}

/** diffusers' DDIMScheduler with eta = 0 (deterministic). */
class Ddim(config: SchedulerConfig, private val steps: Int) : AlphaScheduler(config, "ddim") {
    override val timesteps: DoubleArray

    init {
        val ts: IntArray = when (config.timestepSpacing) {
            "linspace" -> SchedulerConfig.linspace(0.0, (n - 1).toDouble(), steps).map { Math.rint(it).toInt() }.reversed().toIntArray()
            "leading" -> IntArray(steps) { (steps - 1 - it) * (n / steps) + config.stepsOffset }
            "trailing" -> Schedulers.arange(n.toDouble(), 0.0, -n.toDouble() / steps).map { Math.rint(it).toInt() - 1 }.toIntArray()
            else -> throw BundleException("scheduler.json: timestep_spacing \"${config.timestepSpacing}\" is not supported")
        }
        if (steps > n) throw BundleException("ddim: $steps steps is more than num_train_timesteps $n")
        timesteps = DoubleArray(ts.size) { ts[it].toDouble() }
    }

    override fun step(modelOutput: FloatArray, stepIndex: Int, sample: FloatArray, noise: GaussianSource): FloatArray {
        val t = timesteps[stepIndex].toInt()
        val alpha = alphaAt(t)
        val alphaPrev = alphaAt(t - n / steps)
        return FloatArray(sample.size) { i ->
            val (x0, eps) = predict(sample[i].toDouble(), modelOutput[i].toDouble(), alpha)
            (sqrt(alphaPrev) * x0 + sqrt(1 - alphaPrev) * eps).toFloat()
        }
    }
}

/** diffusers' LCMScheduler (strength 1, no custom timesteps). */
class Lcm(config: SchedulerConfig, private val steps: Int) : AlphaScheduler(config, "lcm") {
    override val timesteps: DoubleArray
    private val timestepScaling = config.double("timestep_scaling", 10.0)
    /** The last step's denoised estimate (LCM's `denoised` output), for previews. */
    var lastDenoised: FloatArray? = null
        private set

    override fun defaultClipSample() = false

    init {
        val original = config.int("original_inference_steps", 50)
        if (original > n) throw BundleException("scheduler.json: original_inference_steps $original > num_train_timesteps $n")
        val k = n / original
        val origin = IntArray(original) { (it + 1) * k - 1 }.reversedArray()
        if (origin.size / steps < 1) {
            throw BundleException("lcm: $steps steps is more than original_inference_steps $original")
        }
        val stepSize = origin.size.toDouble() / steps
        timesteps = DoubleArray(steps) { origin[floor(it * stepSize).toInt()].toDouble() }
    }

    override fun step(modelOutput: FloatArray, stepIndex: Int, sample: FloatArray, noise: GaussianSource): FloatArray {
        val t = timesteps[stepIndex].toInt()
        val prevT = if (stepIndex + 1 < timesteps.size) timesteps[stepIndex + 1].toInt() else t
        val alpha = alphaAt(t)
        val alphaPrev = alphaAt(prevT)
        val scaled = t * timestepScaling
        val cSkip = 0.25 / (scaled * scaled + 0.25)
        val cOut = scaled / sqrt(scaled * scaled + 0.25)
        val last = stepIndex == timesteps.size - 1
        val denoised = FloatArray(sample.size)
        val out = FloatArray(sample.size)
        for (i in sample.indices) {
            val x = sample[i].toDouble()
            val (x0, _) = predict(x, modelOutput[i].toDouble(), alpha)
            val d = cOut * x0 + cSkip * x
            denoised[i] = d.toFloat()
            out[i] = if (last) d.toFloat() else (sqrt(alphaPrev) * d + sqrt(1 - alphaPrev) * noise.nextGaussian()).toFloat()
        }
        lastDenoised = denoised
        return out
    }
}

/** LCM's guidance embedding: sinusoidal embedding of (scale - 1) * 1000, sin half then cos half. */
fun guidanceScaleEmbedding(guidanceScale: Double, dim: Int): FloatArray {
    val w = (guidanceScale - 1.0) * 1000.0
    val half = dim / 2
    val out = FloatArray(dim)
    val f = ln(10000.0) / (half - 1)
    for (j in 0 until half) {
        val a = w * exp(-f * j)
        out[j] = kotlin.math.sin(a).toFloat()
        out[half + j] = cos(a).toFloat()
    }
    return out
}
