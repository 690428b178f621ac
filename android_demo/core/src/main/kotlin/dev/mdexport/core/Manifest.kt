package dev.mdexport.core

/** A bundle that cannot be used, with a message for the person who copied it (names the file). */
class BundleException(message: String) : Exception(message)

data class TensorSpec(val name: String, val shape: List<Int>, val dtype: String, val layout: String?) {
    val elementCount: Int get() = shape.fold(1) { a, b -> a * b }
    override fun toString() = "$name $dtype $shape"
}

data class ModelSpec(
    val key: String,
    val file: String,
    val format: String,
    val signature: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val precision: String?,
    val compression: String?,
    val sha256: String?,
    val bytes: Long?,
) {
    fun input(name: String): TensorSpec? = inputs.firstOrNull { it.name == name }
    fun output(name: String): TensorSpec? = outputs.firstOrNull { it.name == name }
}

data class TokenizerSpec(
    val vocab: String,
    val merges: String,
    val bosTokenId: Int,
    val eosTokenId: Int,
    val padTokenId: Int,
)

enum class Guidance(val wire: String) {
    /** Batch 2: row 0 unconditional, row 1 conditional; noise = u + s * (c - u). */
    CFG_BATCH2("cfg-batch2"),
    /** Batch 1, conditional only (distilled models such as SD-Turbo). */
    NONE("none"),
    /** Batch 1, guidance scale fed as `timestep_cond` (LCM). */
    EMBEDDED("embedded");

    companion object {
        fun fromWire(s: String): Guidance? = values().firstOrNull { it.wire == s }
    }
}

data class PipelineSpec(
    val imageHeight: Int,
    val imageWidth: Int,
    val latentChannels: Int,
    val latentHeight: Int,
    val latentWidth: Int,
    val vaeScalingFactor: Double,
    val vaeShiftFactor: Double,
    val decoderAppliesScaling: Boolean,
    val guidance: Guidance,
    val unetBatch: Int,
    val defaultGuidanceScale: Double,
    val defaultSteps: Int,
    val scheduler: String,
    val textMaxLength: Int,
    val textHiddenSize: Int,
    val tokenizer: TokenizerSpec,
)

/** Typed `manifest.json` (schema_version 1, docs/bundle-format.md). */
data class Manifest(
    val schemaVersion: Int,
    val target: String,
    val mdExportVersion: String?,
    val pipeline: PipelineSpec,
    val models: Map<String, ModelSpec>,
    val parityStatus: String?,
) {
    val textEncoder: ModelSpec get() = models.getValue(TEXT_ENCODER)
    val unet: ModelSpec get() = models.getValue(UNET)
    val vaeDecoder: ModelSpec get() = models.getValue(VAE_DECODER)

    /** Throws unless this bundle was exported for [expected] (e.g. "tflite"). */
    fun requireTarget(expected: String) {
        if (target != expected) {
            throw BundleException(
                "$SOURCE: target is \"$target\" but this app runs \"$expected\" bundles; copy out/$expected/ instead"
            )
        }
    }

    companion object {
        const val SUPPORTED_SCHEMA = 1
        const val SOURCE = "manifest.json"
        const val TEXT_ENCODER = "text_encoder"
        const val UNET = "unet"
        const val VAE_DECODER = "vae_decoder"

        /** Parses and validates; every problem found is listed in one [BundleException]. */
        fun parse(text: String): Manifest {
            val root = try {
                Json.parseObject(text, SOURCE)
            } catch (e: JsonException) {
                throw BundleException(e.message ?: "$SOURCE: invalid JSON")
            }
            try {
                val version = root.int("schema_version")
                if (version != SUPPORTED_SCHEMA) {
                    throw BundleException(
                        "$SOURCE: schema_version $version is not supported; this app reads schema_version " +
                            "$SUPPORTED_SCHEMA (re-export with a matching md-export, or update the app)"
                    )
                }
                val m = Manifest(
                    schemaVersion = version,
                    target = root.string("target"),
                    mdExportVersion = if (root.has("md_export_version")) root.string("md_export_version") else null,
                    pipeline = parsePipeline(root.obj("pipeline")),
                    models = root.obj("models").let { ms -> ms.keys.associateWith { parseModel(it, ms.obj(it)) } },
                    parityStatus = root.objOrNull("parity")?.let { if (it.has("status")) it.string("status") else null },
                )
                val problems = m.problems()
                if (problems.isNotEmpty()) throw BundleException("$SOURCE: " + problems.joinToString("; "))
                return m
            } catch (e: JsonException) {
                throw BundleException(e.message ?: "$SOURCE: invalid")
            }
        }

        private fun parsePipeline(p: JsonObject): PipelineSpec {
            val guidanceWire = p.string("guidance")
            val guidance = Guidance.fromWire(guidanceWire) ?: throw JsonException(
                "$SOURCE: pipeline.guidance: unknown value \"$guidanceWire\" (known: " +
                    Guidance.values().joinToString { it.wire } + ")"
            )
            val t = p.obj("tokenizer")
            return PipelineSpec(
                imageHeight = p.int("image_height"),
                imageWidth = p.int("image_width"),
                latentChannels = p.int("latent_channels"),
                latentHeight = p.int("latent_height"),
                latentWidth = p.int("latent_width"),
                vaeScalingFactor = p.double("vae_scaling_factor"),
                vaeShiftFactor = p.doubleOr("vae_shift_factor", 0.0),
                decoderAppliesScaling = p.bool("decoder_applies_scaling"),
                guidance = guidance,
                unetBatch = p.int("unet_batch"),
                defaultGuidanceScale = p.double("default_guidance_scale"),
                defaultSteps = p.int("default_steps"),
                scheduler = p.string("scheduler"),
                textMaxLength = p.int("text_max_length"),
                textHiddenSize = p.int("text_hidden_size"),
                tokenizer = TokenizerSpec(
                    vocab = t.string("vocab"),
                    merges = t.string("merges"),
                    bosTokenId = t.int("bos_token_id"),
                    eosTokenId = t.int("eos_token_id"),
                    padTokenId = t.int("pad_token_id"),
                ),
            )
        }

        private fun parseTensors(list: List<JsonObject>): List<TensorSpec> = list.map {
            TensorSpec(it.string("name"), it.intList("shape"), it.string("dtype"), if (it.has("layout")) it.string("layout") else null)
        }

        private fun parseModel(key: String, o: JsonObject) = ModelSpec(
            key = key,
            file = o.string("file"),
            format = o.string("format"),
            signature = o.stringOr("signature", key),
            inputs = parseTensors(o.objects("inputs")),
            outputs = parseTensors(o.objects("outputs")),
            precision = if (o.has("precision")) o.string("precision") else null,
            compression = if (o.has("compression")) o.string("compression") else null,
            sha256 = if (o.has("sha256")) o.string("sha256") else null,
            bytes = if (o.has("bytes")) o.long("bytes") else null,
        )
    }

    /** Cross-checks the pipeline against the models' IO specs; empty when consistent. */
    fun problems(): List<String> {
        val out = ArrayList<String>()
        val p = pipeline
        val b = p.unetBatch
        val expectedBatch = if (p.guidance == Guidance.CFG_BATCH2) 2 else 1
        if (b != expectedBatch) out += "pipeline.unet_batch is $b but guidance \"${p.guidance.wire}\" needs $expectedBatch"
        val latent = listOf(p.latentChannels, p.latentHeight, p.latentWidth)

        fun checkTensor(model: ModelSpec, spec: TensorSpec?, dir: String, name: String, shape: List<Int>?, dtypes: Set<String>) {
            if (spec == null) {
                out += "models.${model.key}: no $dir named \"$name\" (has: " +
                    (if (dir == "input") model.inputs else model.outputs).joinToString { it.name } + ")"
                return
            }
            if (shape != null && spec.shape != shape) out += "models.${model.key}.$name: shape ${spec.shape}, expected $shape"
            if (spec.dtype !in dtypes) out += "models.${model.key}.$name: dtype ${spec.dtype}, expected one of $dtypes"
        }

        val floats = setOf("float32", "float16")
        val ints = setOf("int32", "int64")
        for (key in listOf(TEXT_ENCODER, UNET, VAE_DECODER)) {
            if (key !in models) out += "models.$key is missing (has: ${models.keys.joinToString()})"
        }
        models[TEXT_ENCODER]?.let { m ->
            checkTensor(m, m.input("input_ids"), "input", "input_ids", listOf(1, p.textMaxLength), ints)
            checkTensor(m, m.output("last_hidden_state"), "output", "last_hidden_state", listOf(1, p.textMaxLength, p.textHiddenSize), floats)
        }
        models[UNET]?.let { m ->
            checkTensor(m, m.input("sample"), "input", "sample", listOf(b) + latent, floats)
            checkTensor(m, m.input("timestep"), "input", "timestep", listOf(b), floats + ints)
            checkTensor(m, m.input("encoder_hidden_states"), "input", "encoder_hidden_states", listOf(b, p.textMaxLength, p.textHiddenSize), floats)
            checkTensor(m, m.output("noise_pred"), "output", "noise_pred", listOf(b) + latent, floats)
            val cond = m.input("timestep_cond")
            if (p.guidance == Guidance.EMBEDDED) {
                checkTensor(m, cond, "input", "timestep_cond", null, floats)
                if (cond != null && (cond.shape.size != 2 || cond.shape[0] != b)) {
                    out += "models.unet.timestep_cond: shape ${cond.shape}, expected [$b, T]"
                }
            } else if (cond != null) {
                out += "models.unet has a timestep_cond input but pipeline.guidance is \"${p.guidance.wire}\" (expected \"embedded\")"
            }
        }
        models[VAE_DECODER]?.let { m ->
            checkTensor(m, m.input("latent"), "input", "latent", listOf(1) + latent, floats)
            checkTensor(m, m.output("image"), "output", "image", listOf(1, 3, p.imageHeight, p.imageWidth), floats)
        }
        if (p.defaultSteps < 1) out += "pipeline.default_steps must be at least 1"
        if (p.vaeScalingFactor == 0.0) out += "pipeline.vae_scaling_factor must not be 0"
        return out
    }
}
