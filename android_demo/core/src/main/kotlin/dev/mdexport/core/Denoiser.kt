package dev.mdexport.core

/** What the user asks for. [steps], [guidanceScale] and [scheduler] default to the manifest's values. */
data class GenerationRequest(
    val prompt: String,
    val negativePrompt: String = "",
    val steps: Int? = null,
    val guidanceScale: Double? = null,
    val seed: Long = 0,
    val scheduler: String? = null,
    /** The initial-noise generator; the default reproduces torch, so a seed gives diffusers' image. */
    val noise: NoiseGenerator = NoiseGenerator.TORCH,
)

data class GenerationResult(
    /** [1, 3, H, W] in [-1, 1] as the decoder returned it. */
    val image: FloatTensor,
    val latents: FloatTensor,
    val steps: Int,
    val scheduler: String,
    val timings: Timings,
)

data class Timings(val textEncoderMs: Long, val unetMs: Long, val decoderMs: Long) {
    val totalMs: Long get() = textEncoderMs + unetMs + decoderMs
}

/** Thrown when [Denoiser.generate]'s cancel check returns true. */
class CancelledException : Exception("cancelled")

/**
 * The text-to-image loop over the three bundle models, as docs/bundle-format.md describes it:
 *
 * - text: `input_ids` [1, L] -> `last_hidden_state` [1, L, D], once for the prompt and, with
 *   guidance "cfg-batch2", once for the negative prompt ("" by default);
 * - scheduler: built from `scheduler.json` after [SchedulerConfig.forGuidance] (diffusers'
 *   StableDiffusionPipeline config rewrite: steps_offset 1, clip_sample false; none for LCM);
 * - latents: `torch.randn([1, C, h, w], generator=torch.Generator("cpu").manual_seed(seed))`
 *   via [TorchGenerator] (NCHW order), times the scheduler's init_noise_sigma in float32; LCM's
 *   step noise comes from the same generator afterwards, one draw per step, as in diffusers;
 * - each step: `sample` = scheduler-scaled latents (stacked twice for cfg-batch2: row 0
 *   unconditional, row 1 conditional), `timestep` = the step's timestep per row,
 *   `encoder_hidden_states`, and for guidance "embedded" (LCM) `timestep_cond` =
 *   [guidanceScaleEmbedding]; with cfg-batch2 the prediction is u + s * (c - u);
 * - decode: `latent` = the final latents when `decoder_applies_scaling`, else
 *   latents / vae_scaling_factor + vae_shift_factor.
 */
class Denoiser(
    val manifest: Manifest,
    val tokenizer: ClipTokenizer,
    val schedulerConfig: SchedulerConfig,
    private val textEncoder: Model,
    private val unet: Model,
    private val decoder: Model,
    private val clock: () -> Long = { System.nanoTime() },
) {
    private val p = manifest.pipeline

    /** The scheduler used when a request names none: the manifest's, else Euler (reported via [schedulerNote]). */
    val defaultScheduler: String = if (p.scheduler in Schedulers.supported) p.scheduler else "euler"
    val schedulerNote: String? = if (p.scheduler in Schedulers.supported) null
        else "manifest scheduler \"${p.scheduler}\" is not implemented here; using euler"

    fun encodeText(text: String): FloatTensor {
        val ids = tokenizer.encode(text)
        if (ids.size != p.textMaxLength) {
            throw BundleException("manifest.json: pipeline.text_max_length is ${p.textMaxLength}, tokenizer gives ${ids.size}")
        }
        val out = textEncoder.run(mapOf("input_ids" to IntTensor(intArrayOf(1, ids.size), ids)))
        return expect(out, Manifest.TEXT_ENCODER, "last_hidden_state", intArrayOf(1, p.textMaxLength, p.textHiddenSize))
    }

    /**
     * Runs the whole pipeline. [onStep] is called after each UNet step with (done, total);
     * [isCancelled] is checked before each step.
     */
    fun generate(
        request: GenerationRequest,
        onStep: (done: Int, total: Int) -> Unit = { _, _ -> },
        isCancelled: () -> Boolean = { false },
    ): GenerationResult {
        val steps = request.steps ?: p.defaultSteps
        val scale = request.guidanceScale ?: p.defaultGuidanceScale
        val schedulerName = request.scheduler ?: defaultScheduler
        val scheduler = Schedulers.create(schedulerName, schedulerConfig.forGuidance(p.guidance), steps)
        val batch = p.unetBatch

        var t0 = clock()
        val cond = encodeText(request.prompt)
        val hidden = if (p.guidance == Guidance.CFG_BATCH2) FloatTensor.concat(listOf(encodeText(request.negativePrompt), cond)) else cond
        val textNs = clock() - t0

        val rng = request.noise.create(request.seed)
        val latentShape = intArrayOf(1, p.latentChannels, p.latentHeight, p.latentWidth)
        val n = latentShape.fold(1) { a, b -> a * b }
        val sigma0 = scheduler.initNoiseSigma.toFloat()
        var latents = rng.randn(n)
        for (i in 0 until n) latents[i] *= sigma0

        val timestepCond: FloatTensor? = if (p.guidance == Guidance.EMBEDDED) {
            val dim = manifest.unet.input("timestep_cond")!!.shape[1]
            FloatTensor(intArrayOf(1, dim), guidanceScaleEmbedding(scale, dim))
        } else null

        t0 = clock()
        for (i in scheduler.timesteps.indices) {
            if (isCancelled()) throw CancelledException()
            val x = scheduler.scaleModelInput(latents, i)
            val sample = FloatArray(n * batch)
            for (b in 0 until batch) x.copyInto(sample, b * n)
            val t = scheduler.timesteps[i].toFloat()
            val inputs = LinkedHashMap<String, Tensor>()
            inputs["sample"] = FloatTensor(intArrayOf(batch, *latentShape.copyOfRange(1, 4)), sample)
            inputs["timestep"] = FloatTensor(intArrayOf(batch), FloatArray(batch) { t })
            inputs["encoder_hidden_states"] = hidden
            if (timestepCond != null) inputs["timestep_cond"] = timestepCond
            val out = expect(unet.run(inputs), Manifest.UNET, "noise_pred", intArrayOf(batch, *latentShape.copyOfRange(1, 4)))
            val eps = if (p.guidance == Guidance.CFG_BATCH2) {
                val d = out.data
                val s = scale.toFloat()
                FloatArray(n) { j -> val u = d[j]; val c = d[n + j]; u + s * (c - u) }
            } else out.data.copyOf(n)
            latents = scheduler.step(eps, i, latents, rng)
            onStep(i + 1, scheduler.timesteps.size)
        }
        val unetNs = clock() - t0

        t0 = clock()
        val decoderInput = if (p.decoderAppliesScaling) latents.copyOf()
            else FloatArray(n) { (latents[it] / p.vaeScalingFactor + p.vaeShiftFactor).toFloat() }
        val image = expect(
            decoder.run(mapOf("latent" to FloatTensor(latentShape, decoderInput))),
            Manifest.VAE_DECODER, "image", intArrayOf(1, 3, p.imageHeight, p.imageWidth),
        )
        val decNs = clock() - t0
        return GenerationResult(
            image, FloatTensor(latentShape, latents), scheduler.timesteps.size, schedulerName,
            Timings(textNs / 1_000_000, unetNs / 1_000_000, decNs / 1_000_000),
        )
    }

    private fun expect(out: Map<String, FloatTensor>, model: String, name: String, shape: IntArray): FloatTensor {
        val t = out[name] ?: throw BundleException(
            "${manifest.models[model]?.file ?: model}: no output named \"$name\" (got: ${out.keys.joinToString()})"
        )
        if (!t.shape.contentEquals(shape)) {
            throw BundleException("${manifest.models[model]?.file ?: model}: output \"$name\" has shape ${t.shapeString()}, expected ${shape.joinToString(", ", "[", "]")}")
        }
        return t
    }
}
