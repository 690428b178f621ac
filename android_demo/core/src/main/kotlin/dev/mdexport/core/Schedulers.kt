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
 * Missing keys take diffusers' defaults for the scheduler being built (as
 * `SchedulerClass.from_config(config)` reads them), so an Euler config turned into DDIM behaves
 * like `DDIMScheduler.from_config(euler_config)`.
 */
class SchedulerConfig(val json: JsonObject) {
    val className: String = json.stringOr("_class_name", "")
    val numTrainTimesteps: Int = json.intOr("num_train_timesteps", 1000)
    val trainedBetas: List<Double>? = if (json.has("trained_betas")) json.doubleList("trained_betas") else null
    val stepsOffset: Int = json.intOr("steps_offset", 0)
    val predictionType: String = json.stringOr("prediction_type", "epsilon")
    val rescaleBetasZeroSnr: Boolean = json.boolOr("rescale_betas_zero_snr", false)
    fun bool(key: String, default: Boolean) = json.boolOr(key, default)
    fun double(key: String, default: Double) = json.doubleOr(key, default)
    fun int(key: String, default: Int) = json.intOr(key, default)
    fun string(key: String, default: String) = json.stringOr(key, default)

    /** `timestep_spacing`, defaulting as the scheduler class does (Euler and DPM-Solver: linspace; DDIM and LCM: leading). */
    fun timestepSpacing(default: String): String = string("timestep_spacing", default)

    /** A copy with [values] replacing (or adding) keys. */
    fun with(vararg values: Pair<String, Any?>): SchedulerConfig =
        SchedulerConfig(JsonObject(json.map + values, json.source, json.path))

    /**
     * The config the loop builds its scheduler from, rewritten as diffusers' StableDiffusionPipeline
     * rewrites an "outdated" config (and as md_export.pipeline.loop does): for guidance
     * `cfg-batch2` and `none`, `steps_offset` = 1 and `clip_sample` = false; for `embedded` (LCM's
     * pipeline does no such rewrite) the config as it is. So DDIM built from an Euler
     * `scheduler.json` gives diffusers' DDIM image.
     */
    fun forGuidance(guidance: Guidance): SchedulerConfig =
        if (guidance == Guidance.EMBEDDED) this else with("steps_offset" to 1L, "clip_sample" to false)

    /** The beta schedule's defaults of the scheduler being built (LCM's differ from the others'). */
    data class BetaDefaults(val betaStart: Double, val betaEnd: Double, val schedule: String) {
        companion object {
            val COMMON = BetaDefaults(0.0001, 0.02, "linear")
            val LCM = BetaDefaults(0.00085, 0.012, "scaled_linear")
        }
    }

    /**
     * alphas_cumprod over the training timesteps as torch computes it: betas in float32 (float32
     * linspace as torch.linspace forms it), the cumulative product accumulated in double and
     * rounded to float32. Returned as doubles holding float32 values.
     */
    fun alphasCumprod(defaults: BetaDefaults = BetaDefaults.COMMON): DoubleArray {
        val n = numTrainTimesteps
        val betaStart = double("beta_start", defaults.betaStart)
        val betaEnd = double("beta_end", defaults.betaEnd)
        val betaSchedule = string("beta_schedule", defaults.schedule)
        var betas: DoubleArray = when {
            trainedBetas != null -> trainedBetas.map { it.toFloat().toDouble() }.toDoubleArray()
            betaSchedule == "linear" -> linspaceF32(betaStart, betaEnd, n)
            betaSchedule == "scaled_linear" -> linspaceF32(sqrt(betaStart), sqrt(betaEnd), n)
                .map { val f = it.toFloat(); (f * f).toDouble() }.toDoubleArray()
            betaSchedule == "squaredcos_cap_v2" -> DoubleArray(n) { i ->
                fun alphaBar(t: Double) = cos((t + 0.008) / 1.008 * Math.PI / 2).pow(2)
                minOf(1 - alphaBar((i + 1).toDouble() / n) / alphaBar(i.toDouble() / n), 0.999).toFloat().toDouble()
            }
            else -> throw BundleException(
                "scheduler.json: beta_schedule \"$betaSchedule\" is not supported (linear, scaled_linear, squaredcos_cap_v2)"
            )
        }
        if (rescaleBetasZeroSnr) betas = rescaleZeroTerminalSnr(betas)
        val ac = DoubleArray(n)
        var prod = 1.0
        for (i in 0 until n) { prod *= (1.0f - betas[i].toFloat()).toDouble(); ac[i] = prod.toFloat().toDouble() }
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

        /** torch.linspace(start, end, num, dtype=float32): float32 step, first half counted up from start, second half down from end. */
        fun linspaceF32(start: Double, end: Double, num: Int): DoubleArray {
            val a = start.toFloat()
            if (num == 1) return doubleArrayOf(a.toDouble())
            val b = end.toFloat()
            val step = (b - a) / (num - 1).toFloat()
            return DoubleArray(num) { i -> (if (i < num / 2) a + step * i.toFloat() else b - step * (num - 1 - i).toFloat()).toDouble() }
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
    val supported = listOf("euler", "ddim", "dpmpp-2m", "lcm")

    fun create(name: String, config: SchedulerConfig, steps: Int): Scheduler {
        require(steps >= 1) { "steps must be at least 1" }
        return when (name) {
            "euler" -> EulerDiscrete(config, steps)
            "ddim" -> Ddim(config, steps)
            "dpmpp-2m" -> DpmSolverPlusPlus2M(config, steps)
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
        val spacing = config.timestepSpacing("linspace")
        var ts: DoubleArray = when (spacing) {
            // float32 in diffusers
            "linspace" -> SchedulerConfig.linspace(0.0, (n - 1).toDouble(), steps).map { it.toFloat().toDouble() }.reversed().toDoubleArray()
            "leading" -> {
                val ratio = n / steps
                DoubleArray(steps) { ((steps - 1 - it) * ratio + config.stepsOffset).toDouble() }
            }
            "trailing" -> Schedulers.arange(n.toDouble(), 0.0, -n.toDouble() / steps).map { Schedulers.roundHalfEven(it) - 1 }.toDoubleArray()
            else -> throw BundleException("scheduler.json: timestep_spacing \"$spacing\" is not supported")
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
        initNoiseSigma = if (spacing == "linspace" || spacing == "trailing") maxSigma
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
abstract class AlphaScheduler(
    config: SchedulerConfig,
    private val name: String,
    betaDefaults: SchedulerConfig.BetaDefaults = SchedulerConfig.BetaDefaults.COMMON,
) : Scheduler {
    protected val n = config.numTrainTimesteps
    protected val alphasCumprod = config.alphasCumprod(betaDefaults)
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
        val spacing = config.timestepSpacing("leading")
        val ts: IntArray = when (spacing) {
            "linspace" -> SchedulerConfig.linspace(0.0, (n - 1).toDouble(), steps).map { Math.rint(it).toInt() }.reversed().toIntArray()
            "leading" -> IntArray(steps) { (steps - 1 - it) * (n / steps) + config.stepsOffset }
            "trailing" -> Schedulers.arange(n.toDouble(), 0.0, -n.toDouble() / steps).map { Math.rint(it).toInt() - 1 }.toIntArray()
            else -> throw BundleException("scheduler.json: timestep_spacing \"$spacing\" is not supported")
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
class Lcm(config: SchedulerConfig, private val steps: Int) : AlphaScheduler(config, "lcm", SchedulerConfig.BetaDefaults.LCM) {
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
        // one torch.randn(shape) draw per intermediate step, after the model call (as diffusers does)
        val z = if (last) null else noise.randn(sample.size)
        val denoised = FloatArray(sample.size)
        val out = FloatArray(sample.size)
        for (i in sample.indices) {
            val x = sample[i].toDouble()
            val (x0, _) = predict(x, modelOutput[i].toDouble(), alpha)
            val d = cOut * x0 + cSkip * x
            denoised[i] = d.toFloat()
            out[i] = if (z == null) d.toFloat() else (sqrt(alphaPrev) * d.toFloat() + sqrt(1 - alphaPrev) * z[i]).toFloat()
        }
        lastDenoised = denoised
        return out
    }
}

/**
 * diffusers' DPMSolverMultistepScheduler as DPM-Solver++ 2M: algorithm_type "dpmsolver++",
 * solver_order 2 (the name fixes both), solver_type midpoint or heun, lower_order_final,
 * euler_at_final, final_sigmas_type zero / sigma_min, Karras sigmas, lambda_min_clipped;
 * epsilon / v_prediction / sample. Deterministic; it keeps the previous step's data prediction,
 * so one instance runs one generation, steps in order.
 */
class DpmSolverPlusPlus2M(config: SchedulerConfig, steps: Int) : Scheduler {
    override val timesteps: DoubleArray
    /** steps + 1 values, the last is the final sigma. */
    val sigmas: DoubleArray
    override val initNoiseSigma: Double = 1.0
    private val prediction = config.predictionType
    private val heun: Boolean
    private val lowerOrderFinal = config.bool("lower_order_final", true)
    private val eulerAtFinal = config.bool("euler_at_final", false)
    private val finalSigmasZero: Boolean
    private var previousX0: DoubleArray? = null
    private var lowerOrderNums = 0
    private var nextStep = 0

    init {
        val name = "dpmpp-2m"
        if (prediction !in setOf("epsilon", "v_prediction", "sample")) Schedulers.predictionTypeError(prediction, name)
        if (config.bool("thresholding", false)) throw BundleException("scheduler.json: thresholding is not supported by $name")
        heun = when (val st = config.string("solver_type", "midpoint")) {
            "midpoint" -> false
            "heun" -> true
            else -> throw BundleException("scheduler.json: solver_type \"$st\" is not supported by $name (midpoint, heun)")
        }
        for (flag in listOf("use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas")) {
            if (config.bool(flag, false)) throw BundleException("scheduler.json: $flag is not supported by $name")
        }
        val variance = config.json.raw("variance_type")
        if (variance == "learned" || variance == "learned_range") {
            throw BundleException("scheduler.json: variance_type \"$variance\" is not supported by $name")
        }
        val n = config.numTrainTimesteps
        if (steps > n) throw BundleException("$name: $steps steps is more than num_train_timesteps $n")
        val ac = config.alphasCumprod()
        if (config.rescaleBetasZeroSnr) ac[n - 1] = 2.0.pow(-24)
        val full = DoubleArray(n) { sqrt((1 - ac[it]) / ac[it]).toFloat().toDouble() }
        // lambda_min_clipped: drop the training timesteps whose log-SNR is below it
        val lambdaMin = config.double("lambda_min_clipped", Double.NEGATIVE_INFINITY)
        val clipped = if (lambdaMin == Double.NEGATIVE_INFINITY) 0 else (0 until n).count { t ->
            val lambda = (ln(sqrt(ac[t])) - ln(sqrt(1 - ac[t]))).toFloat()
            lambda < lambdaMin.toFloat()
        }
        val last = n - clipped
        var ts: DoubleArray = when (val spacing = config.timestepSpacing("linspace")) {
            "linspace" -> SchedulerConfig.linspace(0.0, (last - 1).toDouble(), steps + 1)
                .map { Math.rint(it) }.reversed().dropLast(1).toDoubleArray()
            "leading" -> {
                val ratio = last / (steps + 1)
                DoubleArray(steps) { ((steps - it) * ratio + config.stepsOffset).toDouble() }
            }
            "trailing" -> Schedulers.arange(last.toDouble(), 0.0, -n.toDouble() / steps).map { Math.rint(it) - 1 }.toDoubleArray()
            else -> throw BundleException("scheduler.json: timestep_spacing \"$spacing\" is not supported by $name")
        }
        val sig: DoubleArray
        if (config.bool("use_karras_sigmas", false)) {
            // the ends of the Karras ramp come from the whole training schedule
            val rho = 7.0
            val sMin = config.double("sigma_min", full[0])
            val sMax = config.double("sigma_max", full[n - 1])
            val ramp = SchedulerConfig.linspace(0.0, 1.0, ts.size)
            val minInv = sMin.pow(1 / rho)
            val maxInv = sMax.pow(1 / rho)
            sig = DoubleArray(ts.size) { (maxInv + ramp[it] * (minInv - maxInv)).pow(rho) }
            val logSigmas = DoubleArray(n) { ln(full[it]) }
            val round = config.string("beta_schedule", "linear") != "squaredcos_cap_v2"
            ts = DoubleArray(sig.size) { val t = sigmaToT(sig[it], logSigmas); if (round) Math.rint(t) else t }
        } else {
            sig = DoubleArray(ts.size) { interp(ts[it], full) }
        }
        val finalSigmaType = config.string("final_sigmas_type", "zero")
        val finalSigma = when (finalSigmaType) {
            "zero" -> 0.0
            "sigma_min" -> sqrt((1 - ac[0]) / ac[0])
            else -> throw BundleException("scheduler.json: final_sigmas_type \"$finalSigmaType\" is not supported by $name")
        }
        finalSigmasZero = finalSigmaType == "zero"
        sigmas = DoubleArray(sig.size + 1) { (if (it < sig.size) sig[it] else finalSigma).toFloat().toDouble() }
        // diffusers keeps int64 timesteps
        timesteps = DoubleArray(ts.size) { ts[it].toLong().toDouble() }
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
        val w = ((logSigmas[low] - logSigma) / (logSigmas[low] - logSigmas[low + 1])).coerceIn(0.0, 1.0)
        return (1 - w) * low + w * (low + 1)
    }

    override fun scaleModelInput(sample: FloatArray, stepIndex: Int): FloatArray = sample.copyOf()

    /** (alpha_t, sigma_t) of a sigma: 1 / sqrt(sigma^2 + 1) and sigma times that. */
    private fun alphaOf(sigma: Double) = 1.0 / sqrt(sigma * sigma + 1)

    private fun lambdaOf(sigma: Double): Double { val a = alphaOf(sigma); return ln(a) - ln(sigma * a) }

    override fun step(modelOutput: FloatArray, stepIndex: Int, sample: FloatArray, noise: GaussianSource): FloatArray {
        require(stepIndex == nextStep) { "dpmpp-2m: step $stepIndex called after step ${nextStep - 1}; it runs steps in order" }
        nextStep++
        val count = timesteps.size
        val lowerFinal = stepIndex == count - 1 && (eulerAtFinal || (lowerOrderFinal && count < 15) || finalSigmasZero)
        val sigmaS0 = sigmas[stepIndex]
        val alphaS0 = alphaOf(sigmaS0)
        val sS0 = sigmaS0 * alphaS0
        val x0 = DoubleArray(sample.size) { i ->
            val x = sample[i].toDouble()
            val m = modelOutput[i].toDouble()
            when (prediction) {
                "epsilon" -> (x - sS0 * m) / alphaS0
                "v_prediction" -> alphaS0 * x - sS0 * m
                else -> m
            }.toFloat().toDouble()
        }
        val sigmaT = sigmas[stepIndex + 1]
        val alphaT = alphaOf(sigmaT)
        val sT = sigmaT * alphaT
        val lambdaT = ln(alphaT) - ln(sT) // +infinity when the final sigma is 0
        val lambdaS0 = ln(alphaS0) - ln(sS0)
        val h = lambdaT - lambdaS0
        val expm = exp(-h) - 1.0
        val ratio = sT / sS0
        val prev = previousX0
        val out = FloatArray(sample.size)
        if (lowerOrderNums < 1 || lowerFinal || prev == null) {
            for (i in out.indices) out[i] = (ratio * sample[i] - alphaT * expm * x0[i]).toFloat()
        } else {
            val lambdaS1 = lambdaOf(sigmas[stepIndex - 1])
            val r0 = (lambdaS0 - lambdaS1) / h
            for (i in out.indices) {
                val d1 = (x0[i] - prev[i]) / r0
                out[i] = if (heun) (ratio * sample[i] - alphaT * expm * x0[i] + alphaT * (expm / h + 1.0) * d1).toFloat()
                else (ratio * sample[i] - alphaT * expm * x0[i] - 0.5 * alphaT * expm * d1).toFloat()
            }
        }
        previousX0 = x0
        if (lowerOrderNums < 2) lowerOrderNums++
        return out
    }
}

/**
 * LCM's guidance condition (`timestep_cond`): sinusoidal embedding of (scale - 1) * 1000, sin half
 * then cos half, zero-padded when [dim] is odd. The products are formed in float32 as diffusers
 * (and md_export.pipeline.loop.guidance_embedding) forms them: the arguments reach thousands of
 * radians, so double products would differ from diffusers by up to ~1e-3.
 */
fun guidanceScaleEmbedding(guidanceScale: Double, dim: Int): FloatArray {
    require(dim >= 2) { "timestep_cond size must be at least 2, got $dim" }
    val w = (guidanceScale - 1.0).toFloat() * 1000f
    val half = dim / 2
    val scale = if (half > 1) ln(10000f) / (half - 1).toFloat() else 0f
    val out = FloatArray(dim)
    for (j in 0 until half) {
        val freq = exp((j.toFloat() * -scale).toDouble()).toFloat()
        val arg = (w * freq).toDouble()
        out[j] = kotlin.math.sin(arg).toFloat()
        out[half + j] = cos(arg).toFloat()
    }
    return out
}
