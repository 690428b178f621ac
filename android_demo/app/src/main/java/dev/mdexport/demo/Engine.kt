package dev.mdexport.demo

import android.content.Context
import dev.mdexport.core.Bundle
import dev.mdexport.core.Denoiser
import java.io.Closeable

/** A loaded bundle: checked files plus one LiteRT interpreter per model. */
class Engine private constructor(
    val location: BundleLocation,
    val bundle: Bundle,
    val useGpu: Boolean,
    private val models: List<LiteRtModel>,
    val denoiser: Denoiser,
    val loadMs: Long,
) : Closeable {
    /** e.g. "text_encoder CPU, unet GPU, vae_decoder GPU". */
    val backends: String
        get() = listOf("text_encoder", "unet", "vae_decoder").zip(models).joinToString { (k, m) -> "$k ${m.backend}" }

    override fun close() = models.forEach { it.close() }

    companion object {
        /** Throws [dev.mdexport.core.BundleException] with a message naming the file at fault. */
        fun load(context: Context, useGpu: Boolean): Engine {
            val t0 = System.nanoTime()
            val location = BundleLocator.locate(context)
            val bundle = Bundle.open(location.files, target = "tflite")
            val m = bundle.manifest
            val loaded = ArrayList<LiteRtModel>()
            try {
                for (spec in listOf(m.textEncoder, m.unet, m.vaeDecoder)) loaded += LiteRtModel.load(location, spec, useGpu)
            } catch (e: Throwable) {
                loaded.forEach { it.close() }
                throw e
            }
            val denoiser = Denoiser(m, bundle.tokenizer, bundle.schedulerConfig, loaded[0], loaded[1], loaded[2])
            return Engine(location, bundle, useGpu, loaded, denoiser, (System.nanoTime() - t0) / 1_000_000)
        }
    }
}
