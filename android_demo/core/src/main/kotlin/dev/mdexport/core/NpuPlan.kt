package dev.mdexport.core

/**
 * Which file and which accelerator each model should use on this phone, from md-export's `ai_pack/npu.json`
 * (written by `md-export tflite --npu qualcomm:SM8650,SM8750`).
 *
 * Pure Kotlin: the app passes in what it knows about the device (Build.SOC_MANUFACTURER / Build.SOC_MODEL, whether
 * LiteRT's NPU and GPU accelerators are available) and gets an ordered list of candidates to try with LiteRT's
 * CompiledModel API: the NPU-compiled model for this SoC first (when md-export compiled it for this SoC and the NPU
 * runtime is there), then the uncompiled model on the GPU, then on the CPU. The app tries them in order, keeps the
 * first that loads, and shows [Candidate.label] / [Candidate.why].
 */
enum class Accelerator { NPU, GPU, CPU }

/** Where a model file comes from. */
sealed class ModelSource {
    /** A file of the bundle folder itself ("unet.tflite"), or inside its ai_pack/ folder (sideloaded with adb). */
    data class BundleFile(val path: String) : ModelSource()

    /** An asset of a Play AI pack: pack name and asset path ("unet", "model/unet.tflite"), resolved by Play. */
    data class AiPackAsset(val pack: String, val assetPath: String, val bundlePath: String) : ModelSource()
}

data class Candidate(val model: String, val accelerator: Accelerator, val source: ModelSource, val why: String) {
    /** One line for the UI, e.g. "unet: NPU (Qualcomm SM8750, 532/532 ops compiled)". */
    val label: String get() = "$model: $accelerator ($why)"
}

/** What the app knows about the phone. soc* are Build.SOC_MANUFACTURER / Build.SOC_MODEL (Android 12+, else empty). */
data class DeviceInfo(
    val socManufacturer: String,
    val socModel: String,
    val npuAvailable: Boolean,
    val gpuAvailable: Boolean,
)

data class NpuTargetEntry(
    val soc: String,
    val status: String,
    val file: String?,
    val opsOnNpu: Int,
    val opsTotal: Int,
    val qnnVersion: String?,
    val reason: String?,
)

data class NpuModelEntry(
    val name: String,
    val pack: String,
    val assetPath: String,
    val fallback: String,
    val targets: Map<String, NpuTargetEntry>,
)

class NpuPlan(val vendor: String, val groups: List<String>, val models: Map<String, NpuModelEntry>) {
    companion object {
        const val FILE = "ai_pack/npu.json"
        const val PACK_DIR = "ai_pack"
        /** SoC manufacturer names Android reports for Snapdragon phones (Play's targeting accepts both too). */
        val QUALCOMM_NAMES = setOf("QUALCOMM", "QTI")

        fun parse(text: String, source: String = FILE): NpuPlan {
            val o = Json.parseObject(text, source)
            val schema = o.int("schema_version")
            if (schema != 1) throw BundleException("$source: schema_version $schema; this app reads 1")
            val models = LinkedHashMap<String, NpuModelEntry>()
            val m = o.obj("models")
            for (name in m.map.keys) {
                val e = m.obj(name)
                val targets = LinkedHashMap<String, NpuTargetEntry>()
                val t = e.obj("targets")
                for (soc in t.map.keys) {
                    val r = t.obj(soc)
                    targets[soc.uppercase()] = NpuTargetEntry(
                        soc.uppercase(), r.string("status"), if (r.has("file")) r.string("file") else null,
                        r.intOr("ops_on_npu", 0), r.intOr("ops_total", 0),
                        if (r.has("qnn_version")) r.string("qnn_version") else null,
                        if (r.has("reason")) r.string("reason") else null,
                    )
                }
                models[name] = NpuModelEntry(name, e.stringOr("pack", name), e.stringOr("asset_path", "model/$name.tflite"), e.string("fallback"), targets)
            }
            return NpuPlan(o.stringOr("vendor", "qualcomm"), o.array("groups").map { it.toString() }, models)
        }
    }

    /**
     * Candidates for [model] on [device], best first; the last is always the fallback file on the CPU.
     * [fallbackFile] is the bundle's own model file (manifest models.<m>.file); [sideloaded]: the bundle folder holds
     * ai_pack/ itself (adb push), so compiled models are read from it rather than from a Play AI pack.
     */
    fun candidates(model: String, fallbackFile: String, device: DeviceInfo, sideloaded: Boolean): List<Candidate> {
        val out = ArrayList<Candidate>(3)
        val entry = models[model]
        val soc = device.socModel.trim().uppercase()
        val isQualcomm = device.socManufacturer.trim().uppercase() in QUALCOMM_NAMES
        val target = if (isQualcomm) entry?.targets?.get(soc) else null
        val notNpu: String = when {
            entry == null -> "no NPU model for $model in $FILE"
            soc.isEmpty() -> "the phone does not report its SoC"
            !isQualcomm -> "the SoC is ${device.socManufacturer} $soc, not a Snapdragon"
            target == null -> "$model was not compiled for $soc (compiled for ${entry.targets.keys.joinToString().ifEmpty { "none" }})"
            target.status != "compiled" && target.status != "partial" ->
                "$model did not compile for $soc: ${target.reason ?: target.status}"
            target.file == null -> "$FILE names no file for $model on $soc"
            !device.npuAvailable -> "LiteRT's NPU accelerator is not available (no Qualcomm NPU runtime in the app?)"
            else -> ""
        }
        if (notNpu.isEmpty() && entry != null && target != null && target.file != null) {
            val bundlePath = "$PACK_DIR/${target.file}"
            val src = if (sideloaded) ModelSource.BundleFile(bundlePath) else ModelSource.AiPackAsset(entry.pack, entry.assetPath, bundlePath)
            val ops = "${target.opsOnNpu}/${target.opsTotal} ops compiled"
            out += Candidate(model, Accelerator.NPU, src, "Qualcomm $soc, $ops")
        }
        val base = ModelSource.BundleFile(fallbackFile)
        val prefix = if (notNpu.isEmpty()) "NPU failed to load" else notNpu
        if (device.gpuAvailable) out += Candidate(model, Accelerator.GPU, base, prefix)
        out += Candidate(model, Accelerator.CPU, base, if (device.gpuAvailable) "$prefix; GPU failed to load" else "$prefix; no GPU")
        return out
    }
}

/**
 * Try [candidates] in order with [load] (the app's CompiledModel.create); the first that loads wins.
 * Returns the loaded value and the candidate used; throws the last failure, naming every attempt, if none loads.
 */
fun <T> loadFirst(candidates: List<Candidate>, load: (Candidate) -> T): Pair<T, Candidate> {
    val errors = ArrayList<String>()
    for (c in candidates) {
        try {
            return load(c) to c
        } catch (e: Exception) {
            errors += "${c.accelerator}: ${e.message ?: e.javaClass.simpleName}"
        }
    }
    throw BundleException("${candidates.firstOrNull()?.model ?: "model"}: no accelerator could load it (${errors.joinToString("; ")})")
}
